package transports

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz tests for every SockJS request parser and for the quoting of what
// the server writes into JSON, HTML and event streams.

func FuzzSJSParseMessages(f *testing.F) {
	for _, s := range []string{`["a"]`, `[]`, ``, `["x`, `{"a":1}`, `null`, `[1,{"op":"ping"},"\u2028",null]`, ` [ "a" , "b" ] `, `["\ud800"]`, "  ", "\f[]"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		msgs, err := parseSJSMessages(body)
		if err != nil {
			if !errors.Is(err, errSJSPayloadExpected) && !errors.Is(err, errSJSBrokenJSON) {
				t.Fatalf("unexpected error %v", err)
			}
			if errors.Is(err, errSJSBrokenJSON) && json.Valid(body) {
				t.Fatalf("valid JSON %q called broken", body)
			}
			return
		}
		trimmed := bytes.Trim(body, sjsJSONSpace)
		if !json.Valid(body) || trimmed[0] != '[' {
			t.Fatalf("accepted %q", body)
		}
		var raws []json.RawMessage
		if err := json.Unmarshal(trimmed, &raws); err != nil || len(raws) != len(msgs) {
			t.Fatalf("%d messages from %q (%v)", len(msgs), body, err)
		}
		// The messages quoted again read back the same.
		var enc []byte
		enc = append(enc, '[')
		for i, m := range msgs {
			if i > 0 {
				enc = append(enc, ',')
			}
			enc = appendSJSQuote(enc, m, false)
		}
		enc = append(enc, ']')
		again, err := parseSJSMessages(enc)
		if err != nil || len(again) != len(msgs) {
			t.Fatalf("re-encoded %q: %v", enc, err)
		}
		for i := range msgs {
			if utf8.Valid(msgs[i]) && !bytes.Equal(again[i], msgs[i]) {
				t.Fatalf("message %d: %q became %q", i, msgs[i], again[i])
			}
		}
	})
}

func FuzzSJSWebSocketMessage(f *testing.F) {
	for _, s := range []string{``, `["a"]`, `"a"`, `["a`, `{}`, `  `, `42`, "0\f", " [] "} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs, err := parseSJSWebSocketMessage(data)
		if err != nil {
			if !errors.Is(err, errSJSPayloadExpected) && !errors.Is(err, errSJSBrokenJSON) {
				t.Fatalf("unexpected error %v", err)
			}
			if errors.Is(err, errSJSBrokenJSON) && json.Valid(data) {
				t.Fatalf("valid JSON %q called broken", data)
			}
			return
		}
		if len(data) == 0 {
			if len(msgs) != 0 {
				t.Fatalf("messages from an empty message")
			}
			return
		}
		// Only an empty message is ignored; anything else is JSON.
		if !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
	})
}

// sjsExpectedText is what a client reads back from appendSJSQuote's
// output: the input with every invalid byte as U+FFFD.
func sjsExpectedText(s []byte) string {
	var b strings.Builder
	for len(s) > 0 {
		r, size := utf8.DecodeRune(s)
		b.WriteRune(r)
		s = s[size:]
	}
	return b.String()
}

func FuzzSJSQuote(f *testing.F) {
	for _, s := range []string{"", "a", "\"\\/", "\x00\x1f\x7f", "\u2028\u2029\u200c\u2060\ufff0\uffff", "</script>&", "\xff\xfe", "é€𝄞"} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, s []byte, htmlSafe bool) {
		q := appendSJSQuote(nil, s, htmlSafe)
		var back string
		if err := json.Unmarshal(q, &back); err != nil {
			t.Fatalf("%q quoted as %q, not JSON: %v", s, q, err)
		}
		if want := sjsExpectedText(s); back != want {
			t.Fatalf("%q quoted as %q reads back %q", s, q, back)
		}
		for _, r := range string(q) {
			if r < 0x20 || sjsEscaped(r) || r == utf8.RuneError {
				t.Fatalf("%q quoted as %q holds raw %U", s, q, r)
			}
			if htmlSafe && (r == '<' || r == '>' || r == '&') {
				t.Fatalf("%q quoted HTML-safe as %q holds %q", s, q, r)
			}
		}
	})
}

func FuzzSJSEventData(f *testing.F) {
	for _, s := range []string{"", "a[\"x\"]", "100%", "\r\n\x00", "%25%"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		out := appendSJSEventData(nil, frame)
		if bytes.ContainsAny(out, "\r\n\x00") {
			t.Fatalf("%q as event data %q would end the line", frame, out)
		}
		// sockjs-client decodes with decodeURI; PathUnescape is the same
		// for the escapes used here.
		back, err := url.PathUnescape(string(out))
		if err != nil || back != string(frame) {
			t.Fatalf("%q as %q decodes to %q (%v)", frame, out, back, err)
		}
	})
}

func FuzzSJSSessionPath(f *testing.F) {
	for _, s := range []string{"/000/abc/xhr", "/a/a", "//xhr", "/a./a/xhr", "/a/b/c/d", "/_/_/jsonp", "", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rest string) {
		server, session, transport, ok := sjsSessionPath(rest)
		if !ok {
			return
		}
		for _, id := range []string{server, session} {
			if id == "" || len(id) > sjsMaxIDLen || strings.ContainsAny(id, "/.") {
				t.Fatalf("%q gave id %q", rest, id)
			}
		}
		if "/"+server+"/"+session+"/"+transport != rest || transport == "" || strings.Contains(transport, "/") {
			t.Fatalf("%q split as %q %q %q", rest, server, session, transport)
		}
	})
}

func FuzzSJSCallback(f *testing.F) {
	for _, s := range []string{"callback", "_jp.a1b2c3", "a(1)", "", "x</script>", "a.b_c", "a-b", strings.Repeat("a", 33)} {
		f.Add(s)
	}
	// sockjs-node's check, and cometgate's bounds (1 to max bytes).
	invalid := regexp.MustCompile(`[^a-zA-Z0-9-_.]`)
	f.Fuzz(func(t *testing.T, name string) {
		for _, max := range []int{sjsMaxJSONPCallbackLen, sjsMaxHTMLFileCallbackLen} {
			want := !invalid.MatchString(name) && name != "" && len(name) <= max
			if got := sjsValidCallback(name, max); got != want {
				t.Fatalf("sjsValidCallback(%q, %d) = %v, want %v", name, max, got, want)
			}
		}
		if !sjsValidCallback(name, sjsMaxHTMLFileCallbackLen) {
			return
		}
		// It goes into a script as is: it must not end or escape it.
		page := sjsHTMLFilePrelude(name)
		if bytes.Count(page, []byte("</script>")) != 1 || !bytes.Contains(page, []byte("var c = parent."+name+";\n")) {
			t.Fatalf("callback %q changed the page's structure", name)
		}
	})
}

func FuzzSJSJSONPPayload(f *testing.F) {
	f.Add("application/x-www-form-urlencoded", []byte("d=%5B%22x%22%5D"))
	f.Add("text/plain", []byte(`["x"]`))
	f.Add("", []byte(""))
	f.Add("application/x-www-form-urlencoded; charset=UTF-8", []byte("p=p&d=%ZZ"))
	f.Add("multipart/form-data", []byte("x"))
	f.Add("text/plain", []byte(`"[\"x\"]"`))
	f.Add("text/plain", []byte(`""`))
	f.Add("Text/Plain", []byte(`["x"]`))
	f.Fuzz(func(t *testing.T, ct string, body []byte) {
		payload, err := sjsJSONPPayload(ct, body)
		if err != nil {
			if !errors.Is(err, errSJSPayloadExpected) && !errors.Is(err, errSJSBrokenJSON) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if len(payload) == 0 {
			t.Fatalf("an empty payload from %q %q", ct, body)
		}
		if _, err := parseSJSMessages(payload); err != nil && !errors.Is(err, errSJSPayloadExpected) && !errors.Is(err, errSJSBrokenJSON) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}

func FuzzSJSIframePath(f *testing.F) {
	for _, s := range []string{"/iframe.html", "/iframe-0.1.2.html", "/iframe-/.html", "/IFRAME.HTML", "/iframe", "/iframeXhtml"} {
		f.Add(s)
	}
	// sockjs-node's route, less its trailing "[/]?" (the caller trims one
	// "/") and with a bound on the length.
	ref := regexp.MustCompile(`^/iframe[0-9.a-z_-]*[\x00-\x09\x0b\x0c\x0e-\x7f]html$`)
	f.Fuzz(func(t *testing.T, path string) {
		if got, want := sjsIsIframe(path), ref.MatchString(path) && len(path) <= len("/iframe")+sjsMaxIDLen+len("html"); got != want {
			t.Fatalf("sjsIsIframe(%q) = %v, sockjs-node's route says %v", path, got, want)
		}
	})
}

func FuzzSJSCookieValue(f *testing.F) {
	for _, s := range []string{"dummy", "abc=def", "a b", "a;b", "\"q\"", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if !sjsValidCookieValue(v) {
			return
		}
		if strings.ContainsAny(v, " \t\r\n;,\"\\") || len(v) > 256 {
			t.Fatalf("accepted cookie value %q", v)
		}
	})
}
