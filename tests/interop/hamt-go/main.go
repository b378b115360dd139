// Command hamt-go reads and writes an IPLD HashMap with go-ipld-adl-hamt, the spec's Go ADL, so the
// tests can check how it and ipldmount agree (tests/test_hamt_interop.py, FORMAT.md 6.4).
//
//	hamt-go read CAR ROOTCID      -> {"bitWidth": n, "entries": [[key, found], ...]}
//	    every key the ADL lists, and whether its lookup finds it
//	hamt-go write JSON_IN CAR_OUT -> the root CID, on stdout
//	    JSON_IN is {name: CID text}; a HashMap of those links (sha2-256, bit width 8, buckets of
//	    3), inserted in name order, every HashMap block reachable from its root written to a CARv1
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sort"

	"github.com/ipfs/go-cid"
	hamt "github.com/ipld/go-ipld-adl-hamt"
	"github.com/ipld/go-ipld-prime"
	"github.com/ipld/go-ipld-prime/codec/dagcbor"
	"github.com/ipld/go-ipld-prime/datamodel"
	"github.com/ipld/go-ipld-prime/fluent/qp"
	cidlink "github.com/ipld/go-ipld-prime/linking/cid"
	basicnode "github.com/ipld/go-ipld-prime/node/basic"
	"github.com/ipld/go-ipld-prime/node/bindnode"
	"github.com/ipld/go-ipld-prime/schema"
	"github.com/ipld/go-ipld-prime/storage/memstore"
	"github.com/multiformats/go-multicodec"
)

var linkProto = cidlink.LinkPrototype{Prefix: cid.Prefix{
	Version: 1, Codec: uint64(multicodec.DagCbor), MhType: uint64(multicodec.Sha2_256), MhLength: 32,
}}

func linkSystem() (ipld.LinkSystem, *memstore.Store) {
	store := &memstore.Store{}
	ls := cidlink.DefaultLinkSystem()
	ls.SetReadStorage(store)
	ls.SetWriteStorage(store)
	return ls, store
}

// readCar puts every block of a CARv1 into store.
func readCar(path string, store *memstore.Store) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	in := bufio.NewReader(file)
	if _, err := section(in); err != nil { // the header
		return err
	}
	for {
		data, err := section(in)
		if errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		n, c, err := cid.CidFromBytes(data)
		if err != nil {
			return err
		}
		if err := store.Put(context.Background(), cidlink.Link{Cid: c}.Binary(), data[n:]); err != nil {
			return err
		}
	}
}

func section(in *bufio.Reader) ([]byte, error) {
	size, err := binary.ReadUvarint(in)
	if err != nil {
		return nil, err
	}
	data := make([]byte, size)
	_, err = io.ReadFull(in, data)
	return data, err
}

func load(ls ipld.LinkSystem, root cid.Cid) (*hamt.Node, error) {
	node, err := ls.Load(ipld.LinkContext{}, cidlink.Link{Cid: root}, hamt.HashMapRootPrototype.Representation())
	if err != nil {
		return nil, err
	}
	return hamt.Node{HashMapRoot: *bindnode.Unwrap(node).(*hamt.HashMapRoot)}.WithLinking(ls, linkProto), nil
}

func read(carPath, rootText string) (any, error) {
	root, err := cid.Decode(rootText)
	if err != nil {
		return nil, err
	}
	ls, store := linkSystem()
	if err := readCar(carPath, store); err != nil {
		return nil, err
	}
	node, err := load(ls, root)
	if err != nil {
		return nil, err
	}
	entries := [][2]any{}
	for it := node.MapIterator(); !it.Done(); {
		key, _, err := it.Next()
		if err != nil {
			return nil, err
		}
		name, _ := key.AsString()
		_, err = node.LookupByString(name)
		var missing datamodel.ErrNotExists
		if err != nil && !errors.As(err, &missing) {
			return nil, err
		}
		entries = append(entries, [2]any{name, err == nil})
	}
	bitWidth := bits.TrailingZeros(uint(len(node.Hamt.Map))) + 3
	return map[string]any{"bitWidth": bitWidth, "entries": entries}, nil
}

func write(jsonPath, carPath string) (string, error) {
	text, err := os.ReadFile(jsonPath)
	if err != nil {
		return "", err
	}
	var links map[string]string
	if err := json.Unmarshal(text, &links); err != nil {
		return "", err
	}
	names := make([]string, 0, len(links))
	for name := range links {
		names = append(names, name)
	}
	sort.Strings(names)
	ls, store := linkSystem()
	proto := hamt.Prototype{BitWidth: 8, BucketSize: 3}.WithHashAlg(multicodec.Sha2_256)
	builder := hamt.NewBuilder(proto).WithLinking(ls, linkProto)
	assembler, err := builder.BeginMap(int64(len(names)))
	if err != nil {
		return "", err
	}
	for _, name := range names {
		c, err := cid.Decode(links[name])
		if err != nil {
			return "", err
		}
		if err := assembler.AssembleKey().AssignString(name); err != nil {
			return "", err
		}
		if err := assembler.AssembleValue().AssignLink(cidlink.Link{Cid: c}); err != nil {
			return "", err
		}
	}
	if err := assembler.Finish(); err != nil {
		return "", err
	}
	node := hamt.Build(builder)
	root, err := ls.Store(ipld.LinkContext{}, linkProto, node.Substrate().(schema.TypedNode).Representation())
	if err != nil {
		return "", err
	}
	rootCid := root.(cidlink.Link).Cid
	blocks := []cid.Cid{rootCid}
	for pending := []hamt.HashMapNode{node.Hamt}; len(pending) > 0; pending = pending[1:] {
		for _, element := range pending[0].Data {
			if element.HashMapNode == nil {
				continue
			}
			child, err := ls.Load(ipld.LinkContext{}, *element.HashMapNode, hamt.HashMapNodePrototype.Representation())
			if err != nil {
				return "", err
			}
			blocks = append(blocks, (*element.HashMapNode).(cidlink.Link).Cid)
			pending = append(pending, *bindnode.Unwrap(child).(*hamt.HashMapNode))
		}
	}
	return rootCid.String(), writeCar(carPath, store, blocks)
}

// writeCar writes the blocks, the first as the root, as a CARv1.
func writeCar(path string, store *memstore.Store, blocks []cid.Cid) error {
	header, err := qp.BuildMap(basicnode.Prototype.Any, 2, func(ma datamodel.MapAssembler) {
		qp.MapEntry(ma, "roots", qp.List(1, func(la datamodel.ListAssembler) {
			qp.ListEntry(la, qp.Link(cidlink.Link{Cid: blocks[0]}))
		}))
		qp.MapEntry(ma, "version", qp.Int(1))
	})
	if err != nil {
		return err
	}
	var out bytes.Buffer
	var encoded bytes.Buffer
	if err := dagcbor.Encode(header, &encoded); err != nil {
		return err
	}
	out.Write(binary.AppendUvarint(nil, uint64(encoded.Len())))
	out.Write(encoded.Bytes())
	for _, c := range blocks {
		data, err := store.Get(context.Background(), cidlink.Link{Cid: c}.Binary())
		if err != nil {
			return err
		}
		out.Write(binary.AppendUvarint(nil, uint64(len(c.Bytes())+len(data))))
		out.Write(c.Bytes())
		out.Write(data)
	}
	return os.WriteFile(path, out.Bytes(), 0o644)
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: hamt-go read CAR ROOTCID | write JSON_IN CAR_OUT")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "read":
		var result any
		if result, err = read(os.Args[2], os.Args[3]); err == nil {
			err = json.NewEncoder(os.Stdout).Encode(result)
		}
	case "write":
		var root string
		if root, err = write(os.Args[2], os.Args[3]); err == nil {
			fmt.Println(root)
		}
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hamt-go:", err)
		os.Exit(1)
	}
}
