#!/bin/sh
# Build the Axis 1.4 Outbound Message test receiver into OUT (argument 1, default target/axis):
#   OUT/obm-axis.jar        generated skeleton + our NotificationBindingImpl + obmguard.axis.Main
#   OUT/server-config.wsdd  Axis's stock global settings + the generated Notification service
#   OUT/classpath           the full classpath to run with (see run.sh / README.md)
#   OUT/gen/                the WSDL2Java output actually compiled (for reading only)
# Always rebuilds from scratch (about 3 s). The jar and wsdd are replaced by rename, so a
# receiver that is already running keeps working while another build runs.
# AXIS_JAR_DIR overrides /usr/share/java.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-target/axis}
JARS=${AXIS_JAR_DIR:-/usr/share/java}

die() { echo "build.sh: $*" >&2; exit 1; }

for tool in java javac jar; do
    command -v $tool >/dev/null 2>&1 || die "$tool not found (apt-get install -y default-jdk-headless)"
done
CP=
for j in axis axis-jaxrpc axis-saaj commons-discovery commons-logging wsdl4j; do
    [ -f "$JARS/$j.jar" ] || die "missing $JARS/$j.jar (apt-get install -y libaxis-java)"
    CP="$CP${CP:+:}$JARS/$j.jar"
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W="$OUT/.build.$$"
trap 'rm -rf "$W"' EXIT
rm -rf "$W"
mkdir -p "$W/gen" "$W/classes"

# 1. Generate the server-side skeleton from the WSDL.
java -cp "$CP" org.apache.axis.wsdl.WSDL2Java --server-side -o "$W/gen" \
    "$HERE/account-notification.wsdl" 2>"$W/wsdl2java.log" \
    || { cat "$W/wsdl2java.log" >&2; die "WSDL2Java failed"; }
PKG="$W/gen/com/sforce/soap/_2005/_09/outbound"
[ -f "$PKG/deploy.wsdd" ] || die "WSDL2Java did not produce $PKG/deploy.wsdd"

# 2. Replace the generated (empty) implementation with ours; add our main.
cp "$HERE/src/com/sforce/soap/_2005/_09/outbound/NotificationBindingImpl.java" "$PKG/"
mkdir -p "$W/gen/obmguard/axis"
cp "$HERE/src/obmguard/axis/Main.java" "$W/gen/obmguard/axis/"

# 3. Compile and package.
find "$W/gen" -name '*.java' >"$W/sources.txt"
javac -nowarn -encoding UTF-8 -cp "$CP" -d "$W/classes" @"$W/sources.txt" 2>"$W/javac.log" \
    || { cat "$W/javac.log" >&2; die "javac failed"; }
jar cf "$W/obm-axis.jar" -C "$W/classes" . || die "jar failed"

# 4. server-config.wsdd: the globalConfiguration parameters of Axis's stock server config (what
#    org.apache.axis.utils.Admin writes), without its JWS handlers and Admin/Version services,
#    plus the <service> element of the generated deploy.wsdd, unchanged.
{
    cat <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<deployment xmlns="http://xml.apache.org/axis/wsdd/" xmlns:java="http://xml.apache.org/axis/wsdd/providers/java">
 <globalConfiguration>
  <parameter name="enableNamespacePrefixOptimization" value="false"/>
  <parameter name="dotNetSoapEncFix" value="true"/>
  <parameter name="disablePrettyXML" value="true"/>
  <parameter name="sendXsiTypes" value="true"/>
  <parameter name="sendMultiRefs" value="true"/>
  <parameter name="sendXMLDeclaration" value="true"/>
 </globalConfiguration>
 <handler name="URLMapper" type="java:org.apache.axis.handlers.http.URLMapper"/>
 <transport name="http">
  <requestFlow>
   <handler type="URLMapper"/>
  </requestFlow>
 </transport>
EOF
    sed -n '/<service /,/<\/service>/p' "$PKG/deploy.wsdd"
    echo '</deployment>'
} >"$W/server-config.wsdd"
grep -q 'NotificationBindingImpl' "$W/server-config.wsdd" || die "no <service> element in deploy.wsdd"
echo "$OUT/obm-axis.jar:$CP" >"$W/classpath"

# 5. Publish: rename into place (atomic per file); keep the sources for reading.
mv -f "$W/obm-axis.jar" "$OUT/obm-axis.jar"
mv -f "$W/server-config.wsdd" "$OUT/server-config.wsdd"
mv -f "$W/classpath" "$OUT/classpath"
rm -rf "$OUT/gen.old.$$"
[ ! -d "$OUT/gen" ] || mv "$OUT/gen" "$OUT/gen.old.$$"
mv -T "$W/gen" "$OUT/gen" 2>/dev/null || true  # lost race: keep the other build's copy
rm -rf "$OUT/gen.old.$$"
echo "build.sh: built $OUT"
