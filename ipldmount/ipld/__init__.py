"""Bytes and CIDs: CIDv1 (sha2-256, raw and dag-cbor) and the DAG-CBOR codec.

Imports nothing of ours but :mod:`ipldmount.errors`.
"""
