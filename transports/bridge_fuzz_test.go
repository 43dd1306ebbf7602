package transports

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzByteString: byte strings (the SockJS tcp mode's messages) carry any
// bytes exactly, and a message is read as bytes only when it is one: a
// message parses if and only if it is UTF-8 with no character above
// U+00FF, and then it is exactly the byte string of what it parsed to.
func FuzzByteString(f *testing.F) {
	for _, s := range []string{
		"", "PING\r\n", "\x00", "\x7f\x80", "\xff", "caf\xc3\xa9", "\xc3\xbf", "\xc4\x80",
		"\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xc0\x80", "\xc1\xbf", "\xed\xa0\x80", "\xef\xbf\xbd",
		"\xc3", "\x80", "ascii then \xc3\xa9 then \xc4\x80",
	} {
		f.Add([]byte(s))
	}
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	f.Add(all)
	f.Fuzz(func(t *testing.T, p []byte) {
		// Any bytes survive the round trip.
		enc := appendByteString(nil, p)
		if !utf8.Valid(enc) {
			t.Fatalf("byte string of %q is not UTF-8: %q", p, enc)
		}
		if utf8.RuneCount(enc) != len(p) {
			t.Fatalf("byte string of %d bytes has %d characters", len(p), utf8.RuneCount(enc))
		}
		back, ok := parseByteString(enc)
		if !ok || !bytes.Equal(back, p) {
			t.Fatalf("round trip of %q: %q, %v", p, back, ok)
		}

		// p read as a message.
		msg := append([]byte(nil), p...)
		got, ok := parseByteString(msg)
		want := utf8.Valid(p)
		for _, r := range string(p) {
			want = want && r <= 0xFF
		}
		if ok != want {
			t.Fatalf("parse %q: ok %v, want %v", p, ok, want)
		}
		if !bytes.Equal(msg, p) {
			t.Fatalf("parse changed its input: %q, was %q", msg, p)
		}
		if ok {
			if again := appendByteString(nil, got); !bytes.Equal(again, p) {
				t.Fatalf("%q parsed to %q, whose byte string is %q", p, got, again)
			}
		}
	})
}

// FuzzBase64Message: the bridge's base64 mode (websockify's text mode)
// reads a message exactly as the standard library's base64 decoder does,
// any bytes survive the round trip, and the decoded bytes never outgrow
// what the buffer was sized for, whatever buffer it is handed.
func FuzzBase64Message(f *testing.F) {
	for _, s := range []string{"", "aGVsbG8=", "aGVsbG8", "aGVsbG8=!", "AA==", "AA=", "=", "////", "AAAA\r\nAAAA", "aGVs\nbG8=", "A"} {
		f.Add([]byte(s), 0)
	}
	f.Add([]byte("AAECAwQFBgcICQ=="), 64)
	f.Fuzz(func(t *testing.T, msg []byte, bufCap int) {
		if bufCap < 0 || bufCap > 1<<16 {
			bufCap = 0
		}
		got, err := decodeBase64Message(make([]byte, 0, bufCap), msg)
		want, wantErr := base64.StdEncoding.DecodeString(string(msg))
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("%q: error %v, the standard decoder says %v", msg, err, wantErr)
		}
		if err != nil {
			if !strings.Contains(err.Error(), wantErr.Error()) {
				t.Fatalf("%q: error %q does not say where (%q)", msg, err, wantErr)
			}
			return
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%q: decoded %q, want %q", msg, got, want)
		}
		// Round trip of the message read as bytes.
		enc := base64.StdEncoding.EncodeToString(msg)
		back, err := decodeBase64Message(got, []byte(enc))
		if err != nil || !bytes.Equal(back, msg) {
			t.Fatalf("round trip of %q: %q, %v", msg, back, err)
		}
	})
}
