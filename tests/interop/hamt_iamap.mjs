// An IPLD HashMap read and written by iamap, the spec's JavaScript implementation, so the tests
// can check that ours and the spec's agree (tests/test_hamt_interop.py).
//
//   node hamt_iamap.mjs read CAR ROOTCID      -> {"bitWidth": n, "entries": [[key, found], ...]}
//        every key iamap lists, and whether its get() finds it (the bit width comes from the bitmap)
//   node hamt_iamap.mjs write JSON_IN CAR_OUT -> the root CID, on stdout
//        JSON_IN is {name: CID text}; a HashMap of those links (sha2-256, bit width 8, buckets of 3),
//        every block reachable from its root written to a CARv1
import { createHash } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { CID, CarReader, CarWriter, dagCbor, iamap, sha256 } from '../ipfs-node/hamt-deps.mjs'

const SHA2_256 = 0x12

iamap.registerHasher(SHA2_256, 32, (bytes) => new Uint8Array(createHash('sha256').update(bytes).digest()))

/** A content-addressed store of DAG-CBOR blocks, as iamap wants one; each block is decoded once
 * (iamap loads the nodes on a key's path again for every get). */
function blockStore (blocks = new Map()) {
  const decoded = new Map()
  return {
    blocks,
    async save (node) {
      const bytes = dagCbor.encode(node)
      const cid = CID.create(1, dagCbor.code, await sha256.digest(bytes))
      blocks.set(cid.toString(), bytes)
      return cid
    },
    async load (cid) {
      const bytes = blocks.get(cid.toString())
      if (bytes === undefined) throw new Error(`block ${cid} is not in the CAR`)
      if (!decoded.has(cid.toString())) decoded.set(cid.toString(), dagCbor.decode(bytes))
      return decoded.get(cid.toString())
    },
    isEqual: (a, b) => a.equals(b),
    isLink: (value) => CID.asCID(value) !== null
  }
}

async function read (carPath, rootText) {
  const car = await CarReader.fromBytes(await readFile(carPath))
  const store = blockStore()
  for await (const { cid, bytes } of car.blocks()) store.blocks.set(cid.toString(), bytes)
  const map = await iamap.load(store, CID.parse(rootText))
  const decoder = new TextDecoder('utf-8', { fatal: true })
  const entries = []
  for await (const key of map.keys()) {
    entries.push([decoder.decode(key), (await map.get(key)) !== undefined])
  }
  return { bitWidth: map.config.bitWidth, entries }
}

async function write (jsonPath, carPath) {
  const names = JSON.parse(await readFile(jsonPath, 'utf8'))
  const store = blockStore()
  let map = await iamap.create(store, { hashAlg: SHA2_256, bitWidth: 8, bucketSize: 3 })
  for (const [name, cid] of Object.entries(names)) map = await map.set(name, CID.parse(cid))
  const { writer, out } = CarWriter.create([map.id])
  const chunks = []
  const collected = (async () => { for await (const chunk of out) chunks.push(chunk) })()
  for await (const cid of map.ids()) await writer.put({ cid, bytes: store.blocks.get(cid.toString()) })
  await writer.close()
  await collected
  await writeFile(carPath, Buffer.concat(chunks))
  return map.id.toString()
}

const [mode, a, b] = process.argv.slice(2)
if (mode === 'read' && b) {
  process.stdout.write(JSON.stringify(await read(a, b)) + '\n')
} else if (mode === 'write' && b) {
  process.stdout.write(await write(a, b) + '\n')
} else {
  process.stderr.write('usage: hamt_iamap.mjs read CAR ROOTCID | write JSON_IN CAR_OUT\n')
  process.exit(2)
}
