// Starts Axis 1.4's SimpleAxisServer on 127.0.0.1:<port> with the given server-config.wsdd,
// prints "READY <port>" once the socket is bound and the engine is configured, and exits when
// stdin reaches EOF (or on SIGTERM, which the JVM handles by exiting). With OBM_AXIS_IGNORE_STDIN=1
// stdin is not watched (for running by hand in the background); then only a signal stops it.
package obmguard.axis;

import com.sforce.soap._2005._09.outbound.NotificationBindingImpl;
import java.io.File;
import java.net.InetAddress;
import java.net.ServerSocket;
import org.apache.axis.configuration.FileProvider;
import org.apache.axis.transport.http.SimpleAxisServer;

public final class Main {
    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: obmguard.axis.Main <port|0> <server-config.wsdd>");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        File wsdd = new File(args[1]).getAbsoluteFile();
        if (!wsdd.isFile()) {
            System.err.println("obm-axis: no such file: " + wsdd);
            System.exit(2);
        }
        if (NotificationBindingImpl.seenPath() == null) {
            System.err.println("obm-axis: set OBM_AXIS_SEEN (or -Dobm.axis.seen) to the JSON-lines file");
            System.exit(2);
        }

        SimpleAxisServer server = new SimpleAxisServer();
        server.setMyConfig(new FileProvider(wsdd.getParent(), wsdd.getName()));
        ServerSocket socket = new ServerSocket(port, 50, InetAddress.getByName("127.0.0.1"));
        server.setServerSocket(socket);
        server.getAxisServer(); // load the configuration before announcing readiness
        server.start(true); // daemon accept thread

        System.out.println("READY " + socket.getLocalPort());
        System.out.flush();

        if ("1".equals(System.getenv("OBM_AXIS_IGNORE_STDIN"))) {
            Thread.currentThread().join(); // forever; the JVM exits on SIGTERM/SIGINT
        }
        byte[] buf = new byte[256];
        while (System.in.read(buf) != -1) { /* discard until EOF */ }
        socket.close(); // no SimpleAxisServer.stop(): its pool shutdown waits ~1 s for nothing
        System.exit(0);
    }
}
