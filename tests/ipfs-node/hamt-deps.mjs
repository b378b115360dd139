// The npm packages of tests/interop/hamt_iamap.mjs, resolved here, beside node_modules: a bare
// import resolves from the importing file's folder, and tests/interop has no node_modules.
import { createRequire } from 'node:module'

export * as dagCbor from '@ipld/dag-cbor'
export { CarReader, CarWriter } from '@ipld/car'
export { CID } from 'multiformats/cid'
export { sha256 } from 'multiformats/hashes/sha2'
export const iamap = createRequire(import.meta.url)('iamap') // CommonJS
