package transports

import (
	"bytes"

	"github.com/cometgate/cometgate/gateway"
)

// XHR streaming: one long response, read by the client as it grows
// (XMLHttpRequest progress events, or fetch with a body reader). The body
// starts with a prelude of 2,047 spaces and a newline, because some
// browsers (Internet Explorer's XHR and XDomainRequest, some older mobile
// browsers) and some proxies deliver nothing of a response before its
// first 2 KiB. Then every packet is one line of JSON; packet JSON never
// contains a newline. The heartbeat is an empty line. After StreamLimit
// bytes the response ends and the client opens the next one at
// /xhr_stream/{sid}?ack=N.

// xhrPrelude is the prelude of an XHR stream: 2 KiB of whitespace.
var xhrPrelude = append(bytes.Repeat([]byte{' '}, 2047), '\n')

type xhrFraming struct{}

func (xhrFraming) appendPrelude(b []byte) []byte { return append(b, xhrPrelude...) }

func (xhrFraming) appendBatch(b []byte, pkts []gateway.Packet, ctl []byte) []byte {
	for _, p := range pkts {
		b = p.AppendJSON(b)
		b = append(b, '\n')
	}
	if ctl != nil {
		b = append(b, ctl...)
		b = append(b, '\n')
	}
	return b
}

func (xhrFraming) appendHeartbeat(b []byte) []byte { return append(b, '\n') }
