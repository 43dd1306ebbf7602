package main

import (
	"encoding/json"
	"testing"
)

func TestPayloadRoundTrip(t *testing.T) {
	for _, size := range []int{0, 64, 200, 4096} {
		pb := newPayloadBuilder(size)
		p := pb.Append(nil, 42, 1712345678901234567)
		if size >= minPayload && len(p) != size {
			t.Errorf("size %d: payload is %d bytes", size, len(p))
		}
		if !json.Valid(p) {
			t.Fatalf("payload %q is not JSON", p)
		}
		// The gateway embeds the payload as "data" in a msg packet.
		pkt := []byte(`{"seq":7,"t":"msg","ch":"demo.bench.3","data":` + string(p) + `}`)
		if typ := packetType(pkt); string(typ) != "msg" {
			t.Fatalf("type %q", typ)
		}
		m := scanMsg(pkt)
		if !m.ours || m.seq != 42 || m.ts != 1712345678901234567 || string(m.ch) != "demo.bench.3" {
			t.Fatalf("scanMsg = %+v", m)
		}
	}
}

func TestScanMsgForeign(t *testing.T) {
	for _, pkt := range []string{
		`{"seq":7,"t":"msg","ch":"demo.x","text":"hello"}`,
		`{"seq":7,"t":"msg","ch":"demo.x","data":{"price":1}}`,
		`{"seq":7,"t":"msg","ch":"demo.x","data":{"s":99999999999999999999999,"ts":1}}`,
		`{"seq":7,"t":"msg","ch":"demo.x","data":{"s":1,"ts":}}`,
		`{"seq":7,"t":"msg","ch":"demo.x","data":{"s":1}}`,
	} {
		if m := scanMsg([]byte(pkt)); m.ours {
			t.Errorf("%s taken for a bench message: %+v", pkt, m)
		}
	}
	if typ := packetType([]byte(`{"seq":1,"t":"hello","v":1}`)); string(typ) != "hello" {
		t.Errorf("type %q", typ)
	}
	if typ := packetType([]byte(`{"seq":1}`)); typ != nil {
		t.Errorf("type %q of a packet without one", typ)
	}
}

func FuzzScanMsg(f *testing.F) {
	f.Add([]byte(`{"seq":7,"t":"msg","ch":"demo.bench.3","data":{"s":1,"ts":2,"p":""}}`))
	f.Add([]byte(`{"seq":7,"t":"msg","ch":"`))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = packetType(b)
		_ = scanMsg(b) // must not panic
	})
}
