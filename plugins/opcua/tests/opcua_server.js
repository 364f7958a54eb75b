// An OPC UA server made with node-opcua, for the tests of fieldgate-opcua: an implementation nobody on the team
// wrote. Started by the tests with Debian's node, configured by one JSON argument:
//   {"port": 0, "pki": DIR, "security": "none"|"secure", "users": {"name": "password"}, "anonymous": true,
//    "tick": 50, "items": 0}
// Prints one line `READY {"port": …, "certificate": FILE, "namespace": URI}` when it listens; stops on SIGTERM.
"use strict";
const fs = require("fs");
const path = require("path");
const {
    OPCUAServer, OPCUACertificateManager, Variant, DataType, StatusCodes, MessageSecurityMode, SecurityPolicy,
} = require("node-opcua");

const options = JSON.parse(process.argv[2] || "{}");
const tick = options.tick || 50;

async function main() {
    const secure = options.security === "secure";
    const certificateManager = new OPCUACertificateManager({
        rootFolder: path.join(options.pki, "server"),
        automaticallyAcceptUnknownCertificate: options.accept_unknown !== false,
    });
    await certificateManager.initialize();
    const users = options.users || {};
    const server = new OPCUAServer({
        port: options.port || 0,
        hostname: "127.0.0.1",
        resourcePath: "/fieldgate/test",
        serverCertificateManager: certificateManager,
        securityPolicies: secure ? [SecurityPolicy.Basic256Sha256] : [SecurityPolicy.None],
        securityModes: secure ? [MessageSecurityMode.Sign, MessageSecurityMode.SignAndEncrypt]
            : [MessageSecurityMode.None],
        allowAnonymous: options.anonymous !== false,
        userManager: { isValidUser: (name, password) => users[name] !== undefined && users[name] === password },
        buildInfo: { productName: "fieldgate test server" },
        serverInfo: { applicationName: { text: "Test Line" } },
    });
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.getOwnNamespace();
    const objects = addressSpace.rootFolder.objects;

    const line = ns.addObject({ organizedBy: objects, browseName: "Line1", nodeId: "s=Line1" });
    const variable = (name, nodeId, dataType, value, writable, extra) => ns.addVariable({
        componentOf: line, browseName: name, nodeId, dataType, minimumSamplingInterval: 10,
        accessLevel: writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
        userAccessLevel: writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
        value: new Variant({ dataType: DataType[dataType], value }), ...(extra || {}),
    });
    const temp = variable("Temp", "s=Line1.Temp", "Double", 20.0, false);
    const clock = variable("Clock", "s=Line1.Clock", "Double", Date.now(), false);
    variable("Setpoint", "s=Line1.Setpoint", "Double", 21.5, true);
    variable("Count", "i=1001", "Int32", 7, true);
    variable("Speed", "s=Line1.Speed", "UInt16", 1200, true);
    variable("Running", "s=Line1.Running", "Boolean", true, true);
    variable("Label", "g=72962B91-FA75-4AE6-8D28-B404DC7DAF63", "String", "line one", true);
    const broken = variable("Broken", "s=Line1.Broken", "Double", 0.0, false);
    broken.setValueFromSource({ dataType: DataType.Double, value: 0.0 }, StatusCodes.BadSensorFailure);
    const huge = variable("Huge", "s=Line1.Huge", "String", "x".repeat(200000), false);
    const motor = ns.addObject({ componentOf: line, browseName: "Motor", nodeId: "s=Line1.Motor" });
    ns.addVariable({
        componentOf: motor, browseName: "Current", nodeId: "s=Line1.Motor.Current", dataType: "Float",
        minimumSamplingInterval: 10, value: new Variant({ dataType: DataType.Float, value: 3.5 }),
    });

    const items = [];
    if (options.items) {
        const bench = ns.addObject({ organizedBy: objects, browseName: "Bench", nodeId: "s=Bench" });
        for (let i = 0; i < options.items; i++) {
            items.push(ns.addVariable({
                componentOf: bench, browseName: `Item${i}`, nodeId: `s=Bench.Item${i}`, dataType: "Double",
                minimumSamplingInterval: 10, value: new Variant({ dataType: DataType.Double, value: 0 }),
            }));
        }
    }

    let counter = 0;
    const timer = setInterval(() => {
        counter += 1;
        temp.setValueFromSource({ dataType: DataType.Double, value: 20.0 + (counter % 100) / 10 });
        clock.setValueFromSource({ dataType: DataType.Double, value: Date.now() });
        for (const item of items) {
            item.setValueFromSource({ dataType: DataType.Double, value: counter });
        }
    }, tick);

    await server.start();
    const certificateFile = path.join(options.pki, "server-certificate.der");
    fs.writeFileSync(certificateFile, server.getCertificate());
    const ready = { port: server.endpoints[0].port, certificate: certificateFile, namespace: ns.namespaceUri };
    process.stdout.write(`READY ${JSON.stringify(ready)}\n`);

    const stop = async () => {
        clearInterval(timer);
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => {
    process.stderr.write(`opcua_server: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
});
