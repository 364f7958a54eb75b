// A BACnet/IP device served with @bacnet-js/client (another implementation than the gateway's bacpypes3), for
// the plugin's tests. Run: node bacnet_device.js '<json settings>' with NODE_PATH at the package's node_modules.
//
// Settings: address, port, instance, maxApdu (no segmentation: a longer answer counts as a violation), cov
// (serve SubscribeCOV), rpm (serve ReadPropertyMultiple), inputs (how many extra analog-inputs).
// Objects: analog-value 1, binary-value 1, multi-state-value 1 (present-value commandable with a priority array),
// analog-input 1..inputs (read-only), and the device object.
// Standard input takes JSON lines: {"cmd": "set", "object": "0:1", "value": 3.5} changes an input's value (COV
// subscribers are told); {"cmd": "put", "object": "0:1", "tag": 7, "value": "text"} answers a value of any
// application tag; {"cmd": "dump"} prints the state as one JSON line; {"cmd": "silent", "on": true} stops
// answering (a device that went away). Standard output: {"ready": …} once listening, then the dumps.
'use strict'

const readline = require('readline')
const bacnet = require('@bacnet-js/client')

const BACnetClient = bacnet.default
const { ApplicationTag: T, ObjectType: O, PropertyIdentifier: P, ErrorClass, ErrorCode } = bacnet
const { ConfirmedServiceChoice: S, Segmentation, ServicesSupported } = bacnet

const settings = Object.assign(
    { address: '127.0.0.1', port: 47808, instance: 1234, maxApdu: 480, cov: true, rpm: true, inputs: 4 },
    JSON.parse(process.argv[2] || '{}'),
)

const ALL = 0xffffffff
const objects = new Map() // "type:instance" -> {id, props: Map(propId -> [appdata]), commandable, priority}
const stats = { rp: 0, rpm: 0, rpmRefs: [], wp: 0, cov: 0, notifications: 0, maxApdu: 0, oversized: 0, whoIs: 0 }
const subscriptions = new Map() // "address|pid|objkey" -> {address, pid, objectId, confirmed, expires}
let silent = false

const key = (id) => `${id.type}:${id.instance}`
const real = (v) => [{ type: T.REAL, value: v }]
const str = (v) => [{ type: T.CHARACTER_STRING, value: v }]
const enm = (v) => [{ type: T.ENUMERATED, value: v }]
const uns = (v) => [{ type: T.UNSIGNED_INTEGER, value: v }]
const oid = (type, instance) => [{ type: T.OBJECTIDENTIFIER, value: { type, instance } }]
const statusFlags = () => [{ type: T.BIT_STRING, value: BACnetClient.createBitstring([]) }]

function addObject(type, instance, name, props, commandable, valueTag, relinquish) {
    const id = { type, instance }
    const all = new Map([
        [P.OBJECT_IDENTIFIER, oid(type, instance)],
        [P.OBJECT_NAME, str(name)],
        [P.OBJECT_TYPE, enm(type)],
        [P.STATUS_FLAGS, statusFlags()],
        [P.EVENT_STATE, enm(0)],
        [P.OUT_OF_SERVICE, [{ type: T.BOOLEAN, value: false }]],
        ...props,
    ])
    const obj = { id, props: all, commandable, valueTag, relinquish, priority: new Array(16).fill(null) }
    if (commandable) {
        all.set(P.RELINQUISH_DEFAULT, [{ type: valueTag, value: relinquish }])
        all.set(P.PRESENT_VALUE, [{ type: valueTag, value: relinquish }])
    }
    objects.set(key(id), obj)
    return obj
}

addObject(O.ANALOG_VALUE, 1, 'zone-setpoint', [
    [P.UNITS, enm(bacnet.EngineeringUnits.DEGREES_CELSIUS)],
    [P.DESCRIPTION, str('Zone temperature setpoint')],
    [P.COV_INCREMENT, real(0.1)],
], true, T.REAL, 20.0)
addObject(O.BINARY_VALUE, 1, 'fan-enable', [
    [P.ACTIVE_TEXT, str('on')],
    [P.INACTIVE_TEXT, str('off')],
], true, T.ENUMERATED, 0)
addObject(O.MULTI_STATE_VALUE, 1, 'operating-mode', [
    [P.NUMBER_OF_STATES, uns(3)],
    [P.STATE_TEXT, [...str('off'), ...str('comfort'), ...str('eco')]],
], true, T.UNSIGNED_INTEGER, 1)
for (let i = 1; i <= settings.inputs; i++) {
    addObject(O.ANALOG_INPUT, i, `sensor-${i}`, [
        [P.PRESENT_VALUE, real(10 * i + 0.5)],
        [P.UNITS, enm(bacnet.EngineeringUnits.PERCENT_RELATIVE_HUMIDITY)],
        [P.COV_INCREMENT, real(0.5)],
    ], false)
}

const services = [ServicesSupported.READ_PROPERTY, ServicesSupported.WRITE_PROPERTY, ServicesSupported.WHO_IS,
    ServicesSupported.I_AM]
if (settings.rpm) services.push(ServicesSupported.READ_PROPERTY_MULTIPLE)
if (settings.cov) services.push(ServicesSupported.SUBSCRIBE_COV)
const device = addObject(O.DEVICE, settings.instance, `test-device-${settings.instance}`, [
    [P.VENDOR_NAME, str('bacnet-js test device')],
    [P.VENDOR_IDENTIFIER, uns(260)],
    [P.MODEL_NAME, str('fieldgate test')],
    [P.DESCRIPTION, str('A device served by @bacnet-js/client')],
    [P.PROTOCOL_VERSION, uns(1)],
    [P.PROTOCOL_REVISION, uns(14)],
    [P.MAX_APDU_LENGTH_ACCEPTED, uns(settings.maxApdu)],
    [P.SEGMENTATION_SUPPORTED, enm(Segmentation.NO_SEGMENTATION)],
    [P.PROTOCOL_SERVICES_SUPPORTED, [{ type: T.BIT_STRING, value: BACnetClient.createBitstring(services) }]],
    [P.APDU_TIMEOUT, uns(3000)],
    [P.NUMBER_OF_APDU_RETRIES, uns(0)],
    [P.SYSTEM_STATUS, enm(0)],
], false)
device.props.set(P.OBJECT_LIST, [...objects.values()].map((o) => oid(o.id.type, o.id.instance)[0]))

const client = new BACnetClient({ port: settings.port, interface: settings.address, apduTimeout: 2000 })

// Count what leaves: a device without segmentation may not send an APDU longer than its max-APDU.
const transport = client._transport
const send = transport.send.bind(transport)
transport.send = (buffer, length, receiver) => {
    if (silent) return
    const apdu = length - 6 // BVLC (4) and a local NPDU (2)
    stats.maxApdu = Math.max(stats.maxApdu, apdu)
    if (apdu > settings.maxApdu) stats.oversized++
    send(buffer, length, receiver)
}

function receiver(data) {
    const sender = data.header && data.header.sender
    return { address: typeof sender === 'string' ? sender : sender.address }
}

function error(data, service, cls, code) {
    client.errorResponse(receiver(data), service, data.invokeId, cls, code)
}

function readValue(obj, prop) {
    // -> {value: [appdata]} or {error: [class, code]}
    if (prop.id === P.PRIORITY_ARRAY && obj.commandable) {
        const slots = obj.priority.map((v) => (v === null ? { type: T.NULL, value: null } : { type: obj.valueTag, value: v }))
        if (prop.index === ALL) return { value: slots }
        if (prop.index === 0) return { value: uns(16) }
        if (prop.index > 16) return { error: [ErrorClass.PROPERTY, ErrorCode.INVALID_ARRAY_INDEX] }
        return { value: [slots[prop.index - 1]] }
    }
    const value = obj.props.get(prop.id)
    if (value === undefined) return { error: [ErrorClass.PROPERTY, ErrorCode.UNKNOWN_PROPERTY] }
    if (prop.index === ALL) return { value }
    if (prop.index === 0) return { value: uns(value.length) }
    if (prop.index > value.length) return { error: [ErrorClass.PROPERTY, ErrorCode.INVALID_ARRAY_INDEX] }
    return { value: [value[prop.index - 1]] }
}

function find(objectId) {
    if (objectId.type === O.DEVICE && objectId.instance === 4194303) return device
    return objects.get(key(objectId))
}

client.on('whoIs', (data) => {
    if (silent) return
    stats.whoIs++
    const { lowLimit, highLimit } = data.payload || {}
    if (lowLimit !== undefined && lowLimit > settings.instance) return
    if (highLimit !== undefined && highLimit < settings.instance) return
    client.iAmResponse(receiver(data), settings.instance, Segmentation.NO_SEGMENTATION, 260)
})

client.on('readProperty', (data) => {
    if (silent) return
    stats.rp++
    const { objectId, property } = data.payload
    const obj = find(objectId)
    if (!obj) return error(data, S.READ_PROPERTY, ErrorClass.OBJECT, ErrorCode.UNKNOWN_OBJECT)
    const result = readValue(obj, property)
    if (result.error) return error(data, S.READ_PROPERTY, ...result.error)
    client.readPropertyResponse(receiver(data), data.invokeId, obj.id, property, result.value)
})

client.on('readPropertyMultiple', (data) => {
    if (silent) return
    if (!settings.rpm) {
        return error(data, S.READ_PROPERTY_MULTIPLE, ErrorClass.SERVICES, ErrorCode.REJECT_UNRECOGNIZED_SERVICE)
    }
    stats.rpm++
    const results = []
    let refs = 0
    for (const spec of data.payload.properties) {
        const obj = find(spec.objectId)
        const values = []
        for (const property of spec.properties) {
            refs++
            if (!obj) {
                values.push({ property, value: [{ value: { type: 'BacnetError', errorClass: ErrorClass.OBJECT, errorCode: ErrorCode.UNKNOWN_OBJECT } }] })
                continue
            }
            if (property.id === P.ALL) {
                for (const [id] of obj.props) values.push({ property: { id, index: ALL }, value: readValue(obj, { id, index: ALL }).value })
                continue
            }
            const result = readValue(obj, property)
            if (result.error) {
                values.push({ property, value: [{ value: { type: 'BacnetError', errorClass: result.error[0], errorCode: result.error[1] } }] })
            } else {
                values.push({ property, value: result.value })
            }
        }
        results.push({ objectId: obj ? obj.id : spec.objectId, values })
    }
    stats.rpmRefs.push(refs)
    client.readPropertyMultipleResponse(receiver(data), data.invokeId, results)
})

function presentValue(obj) {
    const slot = obj.priority.find((v) => v !== null)
    return slot === undefined ? obj.relinquish : slot
}

function changed(obj) {
    for (const sub of subscriptions.values()) {
        if (key(sub.objectId) === key(obj.id)) notify(sub)
    }
}

client.on('writeProperty', (data) => {
    if (silent) return
    stats.wp++
    const { objectId, value } = data.payload
    const obj = find(objectId)
    if (!obj) return error(data, S.WRITE_PROPERTY, ErrorClass.OBJECT, ErrorCode.UNKNOWN_OBJECT)
    const prop = value.property
    if (!obj.props.has(prop.id)) return error(data, S.WRITE_PROPERTY, ErrorClass.PROPERTY, ErrorCode.UNKNOWN_PROPERTY)
    if (prop.id !== P.PRESENT_VALUE || !obj.commandable) {
        return error(data, S.WRITE_PROPERTY, ErrorClass.PROPERTY, ErrorCode.WRITE_ACCESS_DENIED)
    }
    const written = value.value[0]
    const priority = value.priority >= 1 && value.priority <= 16 ? value.priority : 16
    if (written.type === T.NULL) {
        obj.priority[priority - 1] = null
    } else if (written.type !== obj.valueTag) {
        return error(data, S.WRITE_PROPERTY, ErrorClass.PROPERTY, ErrorCode.INVALID_DATA_TYPE)
    } else if (obj.id.type === O.MULTI_STATE_VALUE && (written.value < 1 || written.value > 3)) {
        return error(data, S.WRITE_PROPERTY, ErrorClass.PROPERTY, ErrorCode.VALUE_OUT_OF_RANGE)
    } else {
        obj.priority[priority - 1] = written.value
    }
    obj.props.set(P.PRESENT_VALUE, [{ type: obj.valueTag, value: presentValue(obj) }])
    client.simpleAckResponse(receiver(data), S.WRITE_PROPERTY, data.invokeId)
    changed(obj)
})

function notify(sub) {
    const obj = find(sub.objectId)
    const remaining = sub.lifetime ? Math.max(0, Math.round((sub.expires - Date.now()) / 1000)) : 0
    const values = [
        { property: { id: P.PRESENT_VALUE, index: ALL }, value: obj.props.get(P.PRESENT_VALUE) },
        { property: { id: P.STATUS_FLAGS, index: ALL }, value: obj.props.get(P.STATUS_FLAGS) },
    ]
    stats.notifications++
    const to = { address: sub.address }
    if (sub.confirmed) {
        client.confirmedCOVNotification(to, obj.id, sub.pid, settings.instance, remaining, values).catch(() => {})
    } else {
        client.unconfirmedCOVNotification(to, sub.pid, settings.instance, obj.id, remaining, values)
    }
}

client.on('subscribeCov', (data) => {
    if (silent) return
    if (!settings.cov) {
        return error(data, S.SUBSCRIBE_COV, ErrorClass.SERVICES, ErrorCode.REJECT_UNRECOGNIZED_SERVICE)
    }
    stats.cov++
    const p = data.payload
    const obj = find(p.monitoredObjectId)
    if (!obj) return error(data, S.SUBSCRIBE_COV, ErrorClass.OBJECT, ErrorCode.UNKNOWN_OBJECT)
    const address = receiver(data).address
    const subKey = `${address}|${p.subscriberProcessId}|${key(obj.id)}`
    if (p.cancellationRequest) {
        subscriptions.delete(subKey)
        return client.simpleAckResponse(receiver(data), S.SUBSCRIBE_COV, data.invokeId)
    }
    const sub = {
        address,
        pid: p.subscriberProcessId,
        objectId: obj.id,
        confirmed: !!p.issueConfirmedNotifications,
        lifetime: p.lifetime || 0,
        expires: Date.now() + (p.lifetime || 0) * 1000,
    }
    subscriptions.set(subKey, sub)
    client.simpleAckResponse(receiver(data), S.SUBSCRIBE_COV, data.invokeId)
    setTimeout(() => notify(sub), 10) // the initial notification follows the acknowledgement
})

setInterval(() => {
    const now = Date.now()
    for (const [k, sub] of subscriptions) if (sub.lifetime && sub.expires < now) subscriptions.delete(k)
}, 200).unref()

function dump() {
    const state = {}
    for (const [k, obj] of objects) {
        const pv = obj.props.get(P.PRESENT_VALUE)
        state[k] = { presentValue: pv ? pv[0].value : null }
        if (obj.commandable) state[k].priorityArray = obj.priority
    }
    const subs = [...subscriptions.values()].map((s) => ({
        address: s.address, pid: s.pid, object: key(s.objectId), confirmed: s.confirmed, lifetime: s.lifetime,
    }))
    process.stdout.write(JSON.stringify({ objects: state, subscriptions: subs, stats }) + '\n')
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
    let msg
    try {
        msg = JSON.parse(line)
    } catch (e) {
        return
    }
    if (msg.cmd === 'set') {
        const [type, instance] = msg.object.split(':').map(Number)
        const obj = find({ type, instance })
        obj.props.set(P.PRESENT_VALUE, [{ type: T.REAL, value: msg.value }])
        changed(obj)
        process.stdout.write(JSON.stringify({ set: msg.object }) + '\n')
    } else if (msg.cmd === 'put') {
        // a value of any application tag: a device that answers what it should not
        const [type, instance] = msg.object.split(':').map(Number)
        find({ type, instance }).props.set(P.PRESENT_VALUE, [{ type: msg.tag, value: msg.value }])
        process.stdout.write(JSON.stringify({ put: msg.object }) + '\n')
    } else if (msg.cmd === 'dump') {
        dump()
    } else if (msg.cmd === 'silent') {
        silent = !!msg.on
        process.stdout.write(JSON.stringify({ silent }) + '\n')
    }
}).on('close', () => process.exit(0))

client.on('listening', () => {
    process.stdout.write(JSON.stringify({ ready: true, address: settings.address, port: settings.port }) + '\n')
})
client.on('error', (err) => {
    process.stderr.write(`bacnet device error: ${err.message}\n`)
    process.exit(3)
})
