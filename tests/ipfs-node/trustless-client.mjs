// An independent trustless-gateway client, for testing `ipldmount serve` with code that is not
// ours: the CAR parser (@ipld/car), hashes (multiformats) and DAG-CBOR decoder (@ipld/dag-cbor)
// that JavaScript IPFS implementations use, all installed with the test node.
//
//   node trustless-client.mjs GATEWAY_URL ROOT_CID
//
// Fetches ROOT's raw block and the CAR of its whole DAG, verifies every block against its CID,
// checks that the CAR holds exactly the DAG (every block reachable from ROOT, none missing),
// and prints {"blocks": N, "bytes": M} as JSON; exits 1 with the reason on stderr otherwise.
import { CarBlockIterator } from '@ipld/car'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'

const [gateway, rootText] = process.argv.slice(2)
const root = CID.parse(rootText)

function fail (message) {
  process.stderr.write(`trustless-client: ${message}\n`)
  process.exit(1)
}

async function verified (cid, bytes) {
  const digest = await sha256.digest(bytes)
  if (cid.multihash.code !== sha256.code || !equal(digest.digest, cid.multihash.digest)) {
    fail(`block ${cid} does not hash to its CID`)
  }
}

function equal (a, b) {
  return a.length === b.length && a.every((byte, index) => byte === b[index])
}

function links (value, found = []) {
  const cid = CID.asCID(value)
  if (cid) {
    found.push(cid)
  } else if (Array.isArray(value)) {
    value.forEach((item) => links(item, found))
  } else if (value && typeof value === 'object' && !(value instanceof Uint8Array)) {
    Object.values(value).forEach((item) => links(item, found))
  }
  return found
}

async function get (query, accept) {
  const response = await fetch(`${gateway}/ipfs/${root}?${query}`, { headers: { accept } })
  if (response.status !== 200) fail(`${query}: HTTP ${response.status}`)
  const type = response.headers.get('content-type') || ''
  if (!type.startsWith(accept)) fail(`${query}: content type ${type}, not ${accept}`)
  return new Uint8Array(await response.arrayBuffer())
}

await verified(root, await get('format=raw', 'application/vnd.ipld.raw'))

const car = await CarBlockIterator.fromBytes(await get('format=car&dag-scope=all', 'application/vnd.ipld.car'))
const wanted = new Set([root.toString()])
const seen = new Set()
let blocks = 0
let bytes = 0
for await (const { cid, bytes: data } of car) {
  if (!wanted.delete(cid.toString())) fail(`unexpected block ${cid} (not linked from what came before)`)
  seen.add(cid.toString())
  await verified(cid, data)
  blocks += 1
  bytes += data.length
  if (cid.code === dagCbor.code) {
    for (const link of links(dagCbor.decode(data))) {
      if (!seen.has(link.toString())) wanted.add(link.toString())
    }
  }
}
if (wanted.size) fail(`the CAR lacks ${wanted.size} blocks, e.g. ${[...wanted][0]}`)
process.stdout.write(JSON.stringify({ blocks, bytes }) + '\n')
