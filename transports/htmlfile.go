package transports

import (
	"bytes"

	"github.com/cometgate/cometgate/gateway"
)

// htmlfile (iframe streaming, the "forever frame"): the client loads
// /htmlfile?cb=NAME in a hidden iframe (or an ActiveX "htmlfile" document)
// and the response is an HTML document that never finishes loading. Its
// head defines p(x), which calls parent.NAME(x); every packet then arrives
// as <script>p(PACKET);</script> and runs as soon as it is parsed. The
// heartbeat calls p(null). The document does not touch document.domain,
// so the page that hosts the iframe must be on the gateway's own origin
// (or behind a proxy that puts them on one): a cross-origin parent cannot
// be called.
//
// Escaping: a packet is JSON whose strings have "<", ">", "&", U+2028 and
// U+2029 escaped (the gateway encodes them that way once, for every
// transport), so no "</script>" or "<!--" can appear inside the script
// element; the callback name is restricted to identifiers and dots.

// htmlPadding follows the document head: some browsers render (and run
// the scripts of) a streamed document only once about 1 KiB has arrived.
var htmlPadding = append(bytes.Repeat([]byte{' '}, 1024), '\n')

type htmlFraming struct {
	cb string // validated by parseCallback
}

func (f htmlFraming) appendPrelude(b []byte) []byte {
	b = append(b, "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>cometgate</title>\n<script>var p=function(x){parent."...)
	b = append(b, f.cb...)
	b = append(b, "(x)};</script>\n</head><body>\n"...)
	return append(b, htmlPadding...)
}

func (htmlFraming) appendBatch(b []byte, pkts []gateway.Packet, ctl []byte) []byte {
	for _, p := range pkts {
		b = append(b, "<script>p("...)
		b = p.AppendJSON(b)
		b = append(b, ");</script>\n"...)
	}
	if ctl != nil {
		b = append(b, "<script>p("...)
		b = append(b, ctl...)
		b = append(b, ");</script>\n"...)
	}
	return b
}

func (htmlFraming) appendHeartbeat(b []byte) []byte {
	return append(b, "<script>p(null);</script>\n"...)
}
