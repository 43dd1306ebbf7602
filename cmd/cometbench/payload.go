package main

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// The bench's messages are JSON objects, so the gateway embeds them in its
// msg packets as "data" unchanged:
//
//	{"s":42,"ts":1712345678901234567,"p":"xxxx"}
//
// "s" is the message's sequence number on its channel (from 1, no gaps on
// the publisher's side), "ts" the publisher's wall clock at send time in
// Unix nanoseconds (publisher and receivers run on one machine, so they
// share the clock), "p" padding up to the requested payload size.

// minPayload is the size of a payload with the largest seq and timestamp
// and an empty pad: smaller --payload values are raised to it.
const minPayload = len(`{"s":18446744073709551615,"ts":9223372036854775807,"p":""}`)

// payloadBuilder appends payloads of one size. Not safe for concurrent use;
// each publisher goroutine has its own.
type payloadBuilder struct {
	size int
	pad  []byte
}

func newPayloadBuilder(size int) *payloadBuilder {
	return &payloadBuilder{size: max(size, minPayload)}
}

// Append appends the payload for seq s sent at ts.
func (p *payloadBuilder) Append(dst []byte, s uint64, ts int64) []byte {
	start := len(dst)
	dst = append(dst, `{"s":`...)
	dst = strconv.AppendUint(dst, s, 10)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, `,"p":"`...)
	n := p.size - (len(dst) - start) - 2
	for len(p.pad) < n {
		p.pad = append(p.pad, 'x')
	}
	if n > 0 {
		dst = append(dst, p.pad[:n]...)
	}
	return append(dst, `"}`...)
}

// msgInfo is what a receiver needs from one msg packet.
type msgInfo struct {
	ch   []byte // the channel, aliasing the packet bytes
	seq  uint64 // the payload's per-channel sequence number
	ts   int64  // the payload's send time
	ours bool   // the payload has the bench's format (else seq and ts are 0)
}

var (
	keyType = []byte(`"t":"`)
	keyCh   = []byte(`"ch":"`)
	keyData = []byte(`"data":{"s":`)
	keyTS   = []byte(`,"ts":`)
	typMsg  = []byte("msg")
)

// packetType returns a packet's "t" without decoding it. The gateway writes
// "t" right after "seq", before any payload, so the first occurrence is the
// field.
func packetType(b []byte) []byte {
	i := bytes.Index(b, keyType)
	if i < 0 {
		return nil
	}
	b = b[i+len(keyType):]
	j := bytes.IndexByte(b, '"')
	if j < 0 {
		return nil
	}
	return b[:j]
}

// scanMsg extracts channel, seq and timestamp from a msg packet without a
// JSON decoder: this runs once per delivery and is most of the
// receiver's own cost. It relies on the gateway's field order ("ch" before
// "data"; the payload embedded as the bench wrote it).
func scanMsg(b []byte) msgInfo {
	var m msgInfo
	if i := bytes.Index(b, keyCh); i >= 0 {
		rest := b[i+len(keyCh):]
		if j := bytes.IndexByte(rest, '"'); j >= 0 {
			m.ch = rest[:j]
		}
	}
	i := bytes.Index(b, keyData)
	if i < 0 {
		return m
	}
	rest := b[i+len(keyData):]
	s, n := parseUint(rest)
	if n == 0 || !bytes.HasPrefix(rest[n:], keyTS) {
		return m
	}
	rest = rest[n+len(keyTS):]
	ts, n2 := parseUint(rest)
	if n2 == 0 || ts > 1<<63-1 {
		return m
	}
	m.seq, m.ts, m.ours = s, int64(ts), true
	return m
}

// parseUint parses leading decimal digits; n is how many bytes it used (0:
// none, or the value overflows).
func parseUint(b []byte) (v uint64, n int) {
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		d := uint64(b[n] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, 0
		}
		v = v*10 + d
		n++
	}
	return v, n
}

// ctlPacket is any packet other than msg, decoded the ordinary way (they
// are rare: hello, ok, err, gap, close).
type ctlPacket struct {
	Seq       uint64 `json:"seq"`
	T         string `json:"t"`
	ID        int64  `json:"id"`
	Ch        string `json:"ch"`
	Sid       string `json:"sid"`
	Code      int    `json:"code"`
	Error     string `json:"error"`
	Reason    string `json:"reason"`
	Reconnect bool   `json:"reconnect"`
}

func decodeCtl(b []byte) (ctlPacket, error) {
	var p ctlPacket
	err := json.Unmarshal(b, &p)
	return p, err
}
