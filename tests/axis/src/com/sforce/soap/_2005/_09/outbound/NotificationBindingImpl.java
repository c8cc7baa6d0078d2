// Hand-written replacement for the NotificationBindingImpl that Axis 1.4's WSDL2Java generates.
// For each notifications call it appends ONE JSON line describing what Axis deserialised to the
// file named by -Dobm.axis.seen=... or the OBM_AXIS_SEEN environment variable, then acks.
package com.sforce.soap._2005._09.outbound;

import com.sforce.soap.enterprise.sobject.Account;
import java.io.FileOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;

public class NotificationBindingImpl implements NotificationPort {

    /** The seen-file path: system property obm.axis.seen, else env OBM_AXIS_SEEN, else null. */
    public static String seenPath() {
        String p = System.getProperty("obm.axis.seen");
        if (p == null || p.isEmpty()) p = System.getenv("OBM_AXIS_SEEN");
        return (p == null || p.isEmpty()) ? null : p;
    }

    public boolean notifications(String organizationId, String actionId, String sessionId,
            String enterpriseUrl, String partnerUrl, AccountNotification[] notification)
            throws java.rmi.RemoteException {
        StringBuilder j = new StringBuilder(256);
        j.append("{\"organizationId\":").append(q(organizationId));
        j.append(",\"actionId\":").append(q(actionId));
        j.append(",\"sessionId\":").append(q(sessionId));
        j.append(",\"enterpriseUrl\":").append(q(enterpriseUrl));
        j.append(",\"partnerUrl\":").append(q(partnerUrl));
        int n = notification == null ? 0 : notification.length;
        StringBuilder ids = new StringBuilder("[");
        StringBuilder sIds = new StringBuilder("[");
        StringBuilder names = new StringBuilder("[");
        for (int i = 0; i < n; i++) {
            AccountNotification a = notification[i];
            Account s = a == null ? null : a.getSObject();
            String sep = i == 0 ? "" : ",";
            ids.append(sep).append(q(a == null ? null : a.getId()));
            sIds.append(sep).append(q(s == null ? null : s.getId()));
            names.append(sep).append(q(s == null ? null : s.getName()));
        }
        j.append(",\"notificationIds\":").append(ids).append(']');
        j.append(",\"notificationCount\":").append(n);
        j.append(",\"sObjectIds\":").append(sIds).append(']');
        j.append(",\"sObjectNames\":").append(names).append(']');
        j.append("}\n");
        write(j.toString());
        return true;
    }

    private static synchronized void write(String line) throws java.rmi.RemoteException {
        String path = seenPath();
        if (path == null) {
            System.err.print("obm-axis: no OBM_AXIS_SEEN set; seen: " + line);
            return;
        }
        try (FileOutputStream out = new FileOutputStream(path, true)) {
            out.write(line.getBytes(StandardCharsets.US_ASCII)); // q() output is pure ASCII
        } catch (IOException e) {
            throw new java.rmi.RemoteException("cannot append to " + path, e);
        }
    }

    /** JSON string literal (or null). Everything outside printable ASCII is a \\uXXXX escape. */
    static String q(String s) {
        if (s == null) return "null";
        StringBuilder b = new StringBuilder(s.length() + 2).append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
                    else b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
