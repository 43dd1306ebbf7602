package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cometgate/cometgate/brokers"
)

var frameSeeds = []string{
	`{"op":"sub","id":1,"ch":"prices.eur.usd"}`,
	`{"op":"sub","id":2,"ch":"prices.*","cursor":"c"}`,
	`{"op":"unsub","id":3,"ch":"prices.*"}`,
	`{"op":"pub","id":4,"ch":"bids.lot7","data":{"eur":120}}`,
	`{"op":"pub","id":5,"ch":"chat.room1","text":"hi"}`,
	`{"op":"pub","id":6,"ch":"raw.x","b64":"AAEC"}`,
	`{"op":"ack","seq":41}`,
	`{"op":"ping","id":7}`,
	`{"op":"ping","id":7,"n":3}`,
	`{"op":"refresh","id":8,"token":"eyJhbGciOiJIUzI1NiJ9.e30.x"}`,
	`{"op":"refresh","id":8,"token":7}`,
	` {"op":"pub","id":1,"ch":"a","data": [ 1 , {"x": "<\u2028>"} ] } `,
	`{"op":"pub","id":1,"ch":"a","data":null}`,
	`{"op":"pub","id":1,"ch":"a","text":null}`,
	`{"OP":"ping","Id":1}`,
	`{"op":"ping","op":"sub"}`,
	`{"op":"ping","id":-1}`,
	`{"op":"ping","id":1e3}`,
	`{"op":"ping","id":9223372036854775808}`,
	`{"op":"ack","seq":18446744073709551615}`,
	`{"op":"nope"}`,
	`{"id":1}`,
	`{"op":"pub","text":"\ud800"}`,
	"{\"op\":\"pub\",\"text\":\"\xff\"}",
	"{\"op\":\"pub\",\"data\":\"\xff\"}",
	`{"op":"sub","ch":1}`,
	`{"op":"sub"`,
	`[]`,
	`[{"op":"ping","id":1},{"op":"nope"},null,1,"x",[]]`,
	`null`,
	``,
	`"op"`,
}

func FuzzDecodeFrame(f *testing.F) {
	for _, s := range frameSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := DecodeFrame(data)
		if err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FrameError", err)
			}
			if fe.ID < 0 {
				t.Fatalf("error with negative id %d", fe.ID)
			}
			return
		}
		checkFrameRoundTrip(t, fr)
	})
}

func FuzzDecodeFrames(f *testing.F) {
	for _, s := range frameSeeds {
		f.Add([]byte(s))
		f.Add([]byte("[" + s + "," + s + "]"))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		frames, errs, err := DecodeFrames(data)
		if err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FrameError", err)
			}
			if frames != nil || errs != nil {
				t.Fatal("frames returned with a failure")
			}
			return
		}
		if len(frames) != len(errs) {
			t.Fatalf("%d frames, %d errors", len(frames), len(errs))
		}
		if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '{' && len(frames) != 1 {
			t.Fatalf("an object decoded as %d frames", len(frames))
		}
		for i := range frames {
			if errs[i] != nil {
				var fe *FrameError
				if !errors.As(errs[i], &fe) {
					t.Fatalf("frame %d: error %v is not a *FrameError", i, errs[i])
				}
				continue
			}
			checkFrameRoundTrip(t, frames[i])
		}
	})
}

// checkFrameRoundTrip checks that a decoded frame survives encoding/json
// and decoding again.
func checkFrameRoundTrip(t *testing.T, fr Frame) {
	t.Helper()
	switch fr.Op {
	case OpSub, OpUnsub, OpPub, OpAck, OpPing, OpRefresh:
	default:
		t.Fatalf("decoded frame with op %q", fr.Op)
	}
	if fr.ID < 0 {
		t.Fatalf("decoded frame with id %d", fr.ID)
	}
	enc, err := json.Marshal(fr)
	if err != nil {
		t.Fatalf("re-encoding %+v: %v", fr, err)
	}
	fr2, err := DecodeFrame(enc)
	if err != nil {
		t.Fatalf("re-decoding %s: %v", enc, err)
	}
	if fr.Op != fr2.Op || fr.ID != fr2.ID || fr.Ch != fr2.Ch || fr.Cursor != fr2.Cursor || fr.Seq != fr2.Seq || fr.N != fr2.N || fr.Token != fr2.Token {
		t.Fatalf("round trip changed the frame: %+v → %s → %+v", fr, enc, fr2)
	}
	if !equalStringPtr(fr.Text, fr2.Text) || !equalStringPtr(fr.B64, fr2.B64) {
		t.Fatalf("round trip changed text or b64: %+v → %s → %+v", fr, enc, fr2)
	}
	if (fr.Data == nil) != (fr2.Data == nil) || fr.Data != nil && !jsonEqual(t, fr.Data, fr2.Data) {
		t.Fatalf("round trip changed data: %s → %s", fr.Data, fr2.Data)
	}
}

func equalStringPtr(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// jsonEqual reports whether a and b hold the same JSON value (numbers
// compared by their text).
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	va, vb := decodeAny(t, a), decodeAny(t, b)
	return reflect.DeepEqual(va, vb)
}

func decodeAny(t *testing.T, data []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %q: %v", data, err)
	}
	return v
}

// checkHTMLSafe fails when b could break out of an HTML or script context
// or is not UTF-8.
func checkHTMLSafe(t *testing.T, b []byte) {
	t.Helper()
	if !utf8.Valid(b) {
		t.Fatalf("not UTF-8: %q", b)
	}
	if i := bytes.IndexAny(b, "<>&\u2028\u2029"); i >= 0 {
		t.Fatalf("raw %q at %d in %s", b[i:i+1], i, b)
	}
	for _, c := range b {
		if c < 0x20 {
			t.Fatalf("raw control character %#x in %q", c, b)
		}
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{
		"", "plain", `"quoted" \back\slash/`, "<script>alert(1)</script>&amp;",
		"\u2028\u2029", "line\nbreak\r\ttab\x00\x01\x1f\x7f", "héllo ✓ 😀",
		"\xff", "\xed\xa0\x80", "a\xc3", "\xef\xbf\xbd", "\ufeff", "</script><!--",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := appendJSONString([]byte("pre"), s)
		if !bytes.HasPrefix(out, []byte("pre")) {
			t.Fatalf("prefix lost: %q", out)
		}
		out = out[len("pre"):]
		if !json.Valid(out) {
			t.Fatalf("invalid JSON %q for %q", out, s)
		}
		checkHTMLSafe(t, out)
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		want := s
		if !utf8.ValidString(s) {
			want = string([]rune(s)) // each invalid byte becomes U+FFFD
		}
		if got != want {
			t.Fatalf("%q encoded as %s decodes to %q, want %q", s, out, got, want)
		}
		// encoding/json agrees on the value.
		std, _ := json.Marshal(s)
		var stdGot string
		_ = json.Unmarshal(std, &stdGot)
		if stdGot != got {
			t.Fatalf("encoding/json decodes %q to %q, appendJSONString to %q", s, stdGot, got)
		}
	})
}

// msgWire is a msg packet as a client decodes it.
type msgWire struct {
	Seq  uint64          `json:"seq"`
	T    string          `json:"t"`
	Ch   *string         `json:"ch"`
	Sub  *string         `json:"sub"`
	Cur  *string         `json:"cur"`
	Data json.RawMessage `json:"data"`
	Text *string         `json:"text"`
	B64  *string         `json:"b64"`
}

func FuzzEncodeMessage(f *testing.F) {
	for _, c := range []struct {
		ch, pattern string
		seq         uint64
		data        string
	}{
		{"prices.eur.usd", "prices.eur.usd", 0, "1.0841"},
		{"prices.eur.gbp", "prices.*", 1041, `{"a":[1,2,{"b":null}]}`},
		{"t.a", "t.>", 0, " { \"h\" : \"<b>&\u2028\" } "},
		{"t.a", "t.a", 0, "hello <world> & \u2029"},
		{"t.a", "t.a", 0, ""},
		{"t.a", "t.a", 0, "\x00\x01\xff"},
		{"t.a", "t.a", 0, "\"\xff\""},
		{"t.a", "t.a", 0, `"\ud800"`},
		{"t.a", "t.a", 0, "1e999"},
		{"t.a", "t.a", 0, "-0.0"},
		{"t.a", "t.a", 0, "true false"},
		{"t.a", "t.a", 18446744073709551615, "null"},
		{"a\xffb", "<x>", 1, "text"},
	} {
		f.Add(c.ch, c.pattern, c.seq, []byte(c.data))
	}
	f.Fuzz(func(t *testing.T, ch, pattern string, seq uint64, data []byte) {
		orig := append([]byte(nil), data...)
		b := EncodeMessage(brokers.Message{Channel: ch, Data: data, Seq: seq}, pattern, time.Time{})
		if !bytes.Equal(data, orig) {
			t.Fatal("EncodeMessage modified the message data")
		}
		p := Packet{Seq: 1, body: b}
		out := p.AppendJSON(nil)
		if !bytes.HasPrefix(out, []byte(`{"seq":1,`)) {
			t.Fatalf("packet %s", out)
		}
		if len(out) != p.JSONLen() || len(out) > p.Size() {
			t.Fatalf("%d bytes, JSONLen %d, Size %d", len(out), p.JSONLen(), p.Size())
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON: %q", out)
		}
		checkHTMLSafe(t, out)
		if b.Type() != TypeMsg || p.Channel() != ch {
			t.Fatalf("type %q channel %q", b.Type(), p.Channel())
		}

		var w msgWire
		dec := json.NewDecoder(bytes.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&w); err != nil {
			t.Fatalf("%s: %v", out, err)
		}
		if w.Seq != 1 || w.T != TypeMsg || w.Ch == nil || *w.Ch != string([]rune(ch)) {
			t.Fatalf("header of %s", out)
		}
		if (w.Sub != nil) != (pattern != ch) || w.Sub != nil && *w.Sub != string([]rune(pattern)) {
			t.Fatalf("sub of %s for pattern %q", out, pattern)
		}
		wantCur := ""
		if seq != 0 {
			wantCur = strconv.FormatUint(seq, 10)
		}
		if p.Cursor() != wantCur || (w.Cur == nil) != (wantCur == "") || w.Cur != nil && *w.Cur != wantCur {
			t.Fatalf("cursor of %s for seq %d", out, seq)
		}

		n := 0
		if w.Data != nil {
			n++
			if !utf8.Valid(data) || !json.Valid(data) || !jsonEqual(t, data, w.Data) {
				t.Fatalf("data %s for payload %q", w.Data, data)
			}
		}
		if w.Text != nil {
			n++
			if *w.Text != string(data) || len(data) > 0 && json.Valid(data) {
				t.Fatalf("text %q for payload %q", *w.Text, data)
			}
		}
		if w.B64 != nil {
			n++
			got, err := base64.StdEncoding.DecodeString(*w.B64)
			if err != nil || !bytes.Equal(got, data) || utf8.Valid(data) {
				t.Fatalf("b64 %q for payload %q", *w.B64, data)
			}
		}
		if n != 1 {
			t.Fatalf("%d payload fields in %s", n, out)
		}
	})
}
