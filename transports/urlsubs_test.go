package transports

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/cometgate/cometgate/gateway"
)

func TestURLStarts(t *testing.T) {
	chs := []string{"demo.a", "demo.>"}
	for _, tc := range []struct {
		query string
		want  []gateway.Start
		err   string
	}{
		{"", []gateway.Start{{}, {}}, ""},
		{"cursor.demo.a=4&latest.demo.%3E=1", []gateway.Start{{Cursor: "4"}, {Latest: true}}, ""},
		{"last.demo.a=10&latest.demo.%3E=true", []gateway.Start{{Last: 10}, {Latest: true}}, ""},
		{"latest.demo.a=1&cursor.demo.a=7", []gateway.Start{{Cursor: "7", Latest: true}, {}}, ""},
		{"latest.demo.a=yes", nil, `latest.demo.a="yes": write latest.demo.a=1`},
		{"last.demo.a=0", nil, `last.demo.a="0": want a count of messages, 1 or more`},
		{"last.demo.a=x", nil, "want a count of messages"},
		{"last.demo.a=1&last.demo.a=2", nil, `"last.demo.a" given 2 times`},
		{"latest.demo.b=1", nil, `"latest.demo.b" names no channel of the URL (ch=demo.b is missing)`},
		{"lastEventId=1,2&latestish=1", []gateway.Start{{}, {}}, ""},
	} {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := urlStarts(q, chs)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.query, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%q: got %+v, %v; want %+v", tc.query, got, err, tc.want)
		}
	}
}

// The current state on subscribe through the URLs that open a session:
// latest.CH on SSE, last.CH on long-polling; a bad one is a 400.
func TestURLStartsOnTransports(t *testing.T) {
	noLeaks(t)
	n := startHistoryNode(t)
	n.publishN(t, "demo.h.a", 1, 5)
	n.publishN(t, "demo.h.b", 6, 2)

	c := openSSE(t, n, "ch=demo.h.*&latest.demo.h.*=1", nil)
	if p := c.next(); p.T != gateway.TypeOK || p.Ch != "demo.h.*" {
		t.Fatalf("want ok, got %+v", p)
	}
	for _, want := range []int{5, 7} {
		if p := c.next(); p.index() != want {
			t.Fatalf("want the latest message %d, got %+v", want, p)
		}
	}
	n.publishN(t, "demo.h.b", 8, 1)
	if p := c.next(); p.index() != 8 {
		t.Fatalf("want live message 8, got %+v", p)
	}
	c.close()

	pc := newPollClient(t, n, false)
	status, body := pc.get("/poll?ch=demo.h.a&last.demo.h.a=2")
	if status != http.StatusOK {
		t.Fatalf("open: %d %s", status, body)
	}
	pkts := pc.decode(body)
	pc.sid, pc.acked = pkts[0].SID, pkts[len(pkts)-1].seq()
	var got []int
	for _, p := range pkts[1:] {
		if p.T == gateway.TypeMsg {
			got = append(got, p.index())
		}
	}
	for len(got) < 2 {
		for _, p := range pc.poll() {
			got = append(got, p.index())
		}
	}
	if !slices.Equal(got, []int{4, 5}) {
		t.Fatalf("poll with last.demo.h.a=2 got %v, want [4 5]", got)
	}

	for _, path := range []string{"/sse?ch=demo.h.a&last.demo.h.a=0", "/poll?ch=demo.h.a&latest.demo.h.b=1"} {
		status, body := httpGetRaw(t, n, path)
		if status != http.StatusBadRequest || !strings.Contains(string(body), "demo.h.") {
			t.Errorf("GET %s: %d %s, want 400 naming the parameter", path, status, body)
		}
	}
}
