package amqpbroker

import (
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/cometgate/cometgate/brokers"
)

func TestBindingKey(t *testing.T) {
	for _, tc := range []struct {
		prefix, pattern, want string
	}{
		{"", "a", "a"},
		{"", "a.b", "a.b"},
		{"", "*", "*"},
		{"", "a.*.c", "a.*.c"},
		{"", ">", "#"},
		{"", "a.>", "a.#"},
		{"", "*.>", "*.#"},
		{"app", ">", "app.#"},
		{"app.", "a.*", "app.a.*"},
		{"app", "x.y", "app.x.y"},
	} {
		k, err := newKeys(tc.prefix)
		if err != nil {
			t.Fatal(err)
		}
		if got := k.bindingKey(tc.pattern); got != tc.want {
			t.Errorf("prefix %q: bindingKey(%q) = %q, want %q", tc.prefix, tc.pattern, got, tc.want)
		}
	}
}

func TestChannelFromRoutingKey(t *testing.T) {
	k, err := newKeys("app")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, want string
		ok        bool
	}{
		{"app.x", "x", true},
		{"app.x.y", "x.y", true},
		{"app", "", false},       // the zero-word match of "app.#"
		{"app.", "", false},      // empty channel
		{"other.x", "", false},   // no prefix
		{"appx.y", "", false},    // prefix must end at a dot
		{"app.x..y", "", false},  // empty token
		{"app.x y", "", false},   // whitespace
		{"app.a.*", "", false},   // a wildcard is not a channel
		{"app.a.#", "", false},   // nor is AMQP's
		{"app.a.>.b", "", false}, // nor a misplaced one
	} {
		got, ok := k.channel(tc.key)
		if got != tc.want || ok != tc.ok {
			t.Errorf("channel(%q) = %q, %v; want %q, %v", tc.key, got, ok, tc.want, tc.ok)
		}
	}
	var none keys
	if got, ok := none.channel("a.b"); got != "a.b" || !ok {
		t.Errorf("no prefix: channel(a.b) = %q, %v", got, ok)
	}
	if got := none.routingKey("a.b"); got != "a.b" {
		t.Errorf("no prefix: routingKey(a.b) = %q", got)
	}
}

func TestNames(t *testing.T) {
	for _, ch := range []string{"a", "a.b", "prices.eur-usd", "x:y@z=1", "ü.ß"} {
		if err := checkChannel(ch); err != nil {
			t.Errorf("checkChannel(%q): %v", ch, err)
		}
	}
	for _, ch := range []string{"", ".", "a.", ".a", "a..b", "a b", "a\tb", "a.*", "a.>", "a.#", "a#b", "*", ">", "a\x7f"} {
		if err := checkChannel(ch); !errors.Is(err, errBadName) {
			t.Errorf("checkChannel(%q) = %v, want errBadName", ch, err)
		}
	}
	for _, p := range []string{"a", "*", ">", "a.*", "*.b", "a.>", "*.*.>", "a.*.c"} {
		if err := checkPattern(p); err != nil {
			t.Errorf("checkPattern(%q): %v", p, err)
		}
	}
	for _, p := range []string{"", "a.>.b", ">.a", "a*", "a>", "#", "a.#", "a..b", "a b"} {
		if err := checkPattern(p); !errors.Is(err, errBadName) {
			t.Errorf("checkPattern(%q) = %v, want errBadName", p, err)
		}
	}
	k, _ := newKeys("pre")
	if err := k.checkLen(strings.Repeat("a", 251)); err != nil {
		t.Errorf("251 bytes + 4 of prefix refused: %v", err)
	}
	if err := k.checkLen(strings.Repeat("a", 252)); !errors.Is(err, errBadName) {
		t.Errorf("252 bytes + 4 of prefix: %v, want errBadName", err)
	}
	if _, err := newKeys("a b"); !errors.Is(err, errBadName) {
		t.Errorf("bad prefix: %v", err)
	}
	if _, err := newKeys("a.>"); !errors.Is(err, errBadName) {
		t.Errorf("wildcard prefix: %v", err)
	}
}

// topicMatch is AMQP's topic-exchange matching, written from the spec
// (words separated by dots; "*" one word; "#" zero or more words), as
// the reference for what a binding routes.
func topicMatch(key, rk []string) bool {
	if len(key) == 0 {
		return len(rk) == 0
	}
	switch key[0] {
	case "#":
		return topicMatch(key[1:], rk) || (len(rk) > 0 && topicMatch(key, rk[1:]))
	case "*":
		return len(rk) > 0 && topicMatch(key[1:], rk[1:])
	}
	return len(rk) > 0 && rk[0] == key[0] && topicMatch(key[1:], rk[1:])
}

// FuzzMatch checks the binding-key translation against AMQP's semantics:
// a binding routes every channel its pattern matches (brokers.MatchChannel,
// which the dispatcher uses), and the only extra it routes is the
// zero-word match of "#". Every name valid in the portable alphabet must
// be valid here too.
func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"a", "a"}, {"a.*", "a.b"}, {"a.>", "a"}, {"a.>", "a.b.c"}, {">", "x"},
		{"*.b.>", "a.b.c"}, {"m.*.c", "m.x.y.c"}, {"*", "a.b"}, {"a.b", "a.b"},
		{"x.*.*", "x.y.z"}, {"*.>", "q"},
	} {
		f.Add(s[0], s[1], false)
		f.Add(s[0], s[1], true)
	}
	f.Fuzz(func(t *testing.T, p, ch string, prefixed bool) {
		if brokers.ValidatePattern(p) != nil || brokers.ValidateChannel(ch) != nil {
			return
		}
		if checkPattern(p) != nil || checkChannel(ch) != nil {
			t.Fatalf("valid for the gateway but refused here: pattern %q, channel %q", p, ch)
		}
		want := brokers.MatchChannel(p, ch)
		prefix := ""
		if prefixed {
			prefix = "app"
		}
		k, err := newKeys(prefix)
		if err != nil {
			t.Fatal(err)
		}
		routed := topicMatch(strings.Split(k.bindingKey(p), "."), strings.Split(k.routingKey(ch), "."))
		if want && !routed {
			t.Fatalf("binding %q does not route %q, which pattern %q matches", k.bindingKey(p), k.routingKey(ch), p)
		}
		if routed && !want {
			// Only "a.>" routing "a" (prefix + "#" routing the bare prefix
			// cannot happen: a channel is never empty).
			base, ok := strings.CutSuffix(p, ".>")
			if !ok || !brokers.MatchChannel(base, ch) {
				t.Fatalf("binding %q routes %q beyond the zero-word case of pattern %q", k.bindingKey(p), k.routingKey(ch), p)
			}
		}
		if back, ok := k.channel(k.routingKey(ch)); !ok || back != ch {
			t.Fatalf("channel(routingKey(%q)) = %q, %v", ch, back, ok)
		}
	})
}

func TestHeaderConversion(t *testing.T) {
	ct, table, err := publishing(map[string]string{"Content-Type": "application/json", "X-A": "1", "empty": ""})
	if err != nil {
		t.Fatal(err)
	}
	if ct != "application/json" || len(table) != 2 || table["X-A"] != "1" || table["empty"] != "" {
		t.Errorf("publishing: content type %q, table %v", ct, table)
	}
	if _, ok := table["Content-Type"]; ok {
		t.Error("Content-Type also went to the headers table")
	}
	if ct, table, err := publishing(nil); ct != "" || table != nil || err != nil {
		t.Errorf("publishing(nil) = %q, %v, %v", ct, table, err)
	}
	for _, h := range []map[string]string{
		{"": "x"},
		{strings.Repeat("k", 256): "x"},
		{"Content-Type": strings.Repeat("t", 256)},
	} {
		if _, _, err := publishing(h); !errors.Is(err, errBadName) {
			t.Errorf("publishing(%.40v…) = %v, want errBadName", h, err)
		}
	}

	when := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	d := &amqp.Delivery{ContentType: "text/plain", Headers: amqp.Table{
		"s": "str", "b": []byte("bytes"), "i": int32(-7), "l": int64(1 << 40), "f": 1.5, "t": true,
		"ts": when, "dec": amqp.Decimal{Scale: 2, Value: -5}, "dec0": amqp.Decimal{Value: 12},
		"nested": amqp.Table{"x": "y"}, "arr": []any{"a"}, "nil": nil,
	}}
	want := map[string]string{
		"Content-Type": "text/plain", "s": "str", "b": "bytes", "i": "-7", "l": "1099511627776",
		"f": "1.5", "t": "true", "ts": "2024-05-06T07:08:09Z", "dec": "-0.05", "dec0": "12",
	}
	got := headerMap(d)
	if len(got) != len(want) {
		t.Errorf("headerMap = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("headerMap[%q] = %q, want %q", k, got[k], v)
		}
	}
	if h := headerMap(&amqp.Delivery{}); h != nil {
		t.Errorf("headerMap of a bare delivery = %v, want nil", h)
	}
	if h := headerMap(&amqp.Delivery{Headers: amqp.Table{"n": amqp.Table{}}}); h != nil {
		t.Errorf("headerMap with only unconvertible values = %v, want nil", h)
	}
	if s := decimalString(amqp.Decimal{Scale: 3, Value: 12345}); s != "12.345" {
		t.Errorf("decimalString = %q", s)
	}
}

func TestBackoff(t *testing.T) {
	base, maxWait := 100*time.Millisecond, time.Second
	for n := range 10 {
		d := min(maxWait, base<<n)
		for range 50 {
			got := backoff(n, base, maxWait)
			if got < d/2 || got > d {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, got, d/2, d)
			}
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{URL: "http://example/"},
		{ExchangeType: "direct"},
		{ExchangeType: "headers"},
		{Prefetch: -1},
		{Prefetch: 70000},
		{Exchange: strings.Repeat("e", 256)},
	} {
		if err := o.withDefaults().validate(); err == nil {
			t.Errorf("validate accepted %+v", o)
		}
	}
	for _, o := range []Options{{}, {ExchangeType: "fanout"}, {URL: "amqps://u:p@h:5671/v"}} {
		if err := o.withDefaults().validate(); err != nil {
			t.Errorf("validate(%+v): %v", o, err)
		}
	}
}
