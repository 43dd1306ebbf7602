package transports

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// client is what the table tests need of each transport of the family.
type client interface {
	// start opens a session subscribed to channels and returns the
	// packets of the first response (polling) or hello (streaming).
	start(channels ...string) []packet
	// more returns the next packets, each checked to continue the seq.
	more() []packet
	sessionID() string
}

type pollAdapter struct{ *pollClient }

func (a pollAdapter) start(channels ...string) []packet { return a.open(channels...) }
func (a pollAdapter) more() []packet                    { return a.poll() }
func (a pollAdapter) sessionID() string                 { return a.sid }

type streamAdapter struct{ *streamClient }

func (a streamAdapter) start(channels ...string) []packet { return []packet{a.open(channels...)} }
func (a streamAdapter) more() []packet                    { return []packet{a.next()} }
func (a streamAdapter) sessionID() string                 { return a.sid }

var kinds = []struct {
	name string
	new  func(t *testing.T, n *testNode) client
}{
	{"polling", func(t *testing.T, n *testNode) client { return pollAdapter{newPollClient(t, n, false)} }},
	{"jsonp", func(t *testing.T, n *testNode) client { return pollAdapter{newPollClient(t, n, true)} }},
	{"xhr_streaming", func(t *testing.T, n *testNode) client { return streamAdapter{newStreamClient(t, n, false)} }},
	{"htmlfile", func(t *testing.T, n *testNode) client { return streamAdapter{newStreamClient(t, n, true)} }},
}

// collect reads packets until until returns true for one; it returns all
// packets read. The rest of a batch is passed to until too: a poll
// response is received as a whole.
func collect(t *testing.T, c client, until func(packet) bool) []packet {
	t.Helper()
	var all []packet
	deadline := time.Now().Add(waitTimeout)
	for {
		done := false
		for _, p := range c.more() {
			all = append(all, p)
			if until(p) {
				done = true
			}
		}
		if done {
			return all
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v; got %d packets", waitTimeout, len(all))
		}
	}
}

// subscribed starts c on channels and waits for the ok of every one.
func subscribed(t *testing.T, c client, channels ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, ch := range channels {
		want[ch] = true
	}
	check := func(p packet) bool {
		if p.T == gateway.TypeErr {
			t.Fatalf("subscription failed: %+v", p)
		}
		if p.T == gateway.TypeOK {
			delete(want, p.Ch)
		}
		return len(want) == 0
	}
	for _, p := range c.start(channels...) {
		check(p)
	}
	if len(want) > 0 {
		collect(t, c, check)
	}
}

// TestDeliversThousandInOrder publishes 1,000 messages and checks that each
// transport delivers all of them, in order, with seq numbers that neither
// skip nor repeat.
func TestDeliversThousandInOrder(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			n := startNode(t, nil, nil)
			c := k.new(t, n)
			subscribed(t, c, "demo.t")
			const total = 1000
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.publishN(t, "demo.t", 0, total)
			}()
			next := 0
			collect(t, c, func(p packet) bool {
				if p.T != gateway.TypeMsg {
					return false
				}
				if i := p.index(); i != next {
					t.Fatalf("message %d arrived where %d was due", i, next)
				}
				next++
				return next == total
			})
			wg.Wait()
		})
	}
}

// TestStreamRecycle: with a small StreamLimit the streams end every few
// KiB and the client goes on with its session id and ack, losing nothing.
//
// The first part publishes in lockstep (the next message only after the
// previous one arrived), so every write carries exactly one packet and
// the number of streams does not depend on how the server batches writes:
// 300 packets of about 60 bytes are more than 4 streams' worth at 4 KiB.
// The rest is published at full speed, where one write may carry many
// packets, to check order and continuity across recycles under load.
func TestStreamRecycle(t *testing.T) {
	for _, html := range []bool{false, true} {
		t.Run(map[bool]string{false: "xhr_streaming", true: "htmlfile"}[html], func(t *testing.T) {
			n := startNode(t, nil, func(o *Options) { o.StreamLimit = 4096 })
			c := newStreamClient(t, n, html)
			subscribed(t, streamAdapter{c}, "demo.r")
			next := 0
			nextMsg := func() {
				t.Helper()
				for {
					p := c.next()
					if p.T != gateway.TypeMsg {
						continue
					}
					if i := p.index(); i != next {
						t.Fatalf("message %d arrived where %d was due", i, next)
					}
					next++
					return
				}
			}
			const lockstep, total = 300, 1000
			before := c.streams
			for next < lockstep {
				n.publishN(t, "demo.r", next, 1)
				nextMsg()
			}
			if got := c.streams - before; got < 4 {
				t.Fatalf("only %d new streams for %d single-packet writes with a 4 KiB limit", got, lockstep)
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.publishN(t, "demo.r", lockstep, total-lockstep)
			}()
			for next < total {
				nextMsg()
			}
			wg.Wait()
		})
	}
}

// TestUpstream publishes from the client (via /session/{sid}/send, or
// /jsonp_send for JSONP) and checks the answer and the delivery, and that
// a retried frame (same "n") is not applied twice.
func TestUpstream(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			n := startNode(t, nil, nil)
			c := k.new(t, n)
			subscribed(t, c, "demo.up")
			send := func(frames string) {
				if k.name != "jsonp" {
					postSend(t, n, c.sessionID(), frames)
					return
				}
				q := url.Values{"cb": {"sent"}, "d": {frames}}
				status, body := httpGet(t, n.client, n.url("/jsonp_send/"+c.sessionID()+"?"+q.Encode()))
				if status != http.StatusOK || string(body) != `/**/sent({"ok":true});` {
					t.Fatalf("jsonp_send: %d %s", status, body)
				}
			}
			first := `{"op":"pub","id":7,"n":1,"ch":"demo.up","data":{"from":"first"}}`
			send(first)
			send(first) // a retry: acknowledged, not applied again
			send(`[{"op":"pub","id":8,"n":2,"ch":"demo.up","text":"second"}]`)
			firsts, oks := 0, map[int64]bool{}
			collect(t, c, func(p packet) bool {
				switch {
				case p.T == gateway.TypeOK:
					oks[p.ID] = true
				case p.T == gateway.TypeMsg && string(p.Data) == `{"from":"first"}`:
					firsts++
				case p.T == gateway.TypeMsg && p.Text != nil && *p.Text == "second":
					// Publishes are applied in order, so a second copy of
					// "first" would have arrived before this.
					return true
				}
				return false
			})
			if firsts != 1 {
				t.Fatalf("the retried publish arrived %d times", firsts)
			}
			if !oks[7] || !oks[8] {
				collect(t, c, func(p packet) bool {
					if p.T == gateway.TypeOK {
						oks[p.ID] = true
					}
					return oks[7] && oks[8]
				})
			}
		})
	}
}

// TestPollBodyFrames: a POST to /poll carries frames whose answers ride on
// the same response.
func TestPollBodyFrames(t *testing.T) {
	n := startNode(t, nil, nil)
	resp, err := n.client.Post(n.url("/poll?ch=demo.a"), "text/plain", strings.NewReader(`[{"op":"sub","id":3,"ch":"demo.b"},{"op":"bogus","id":4}]`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var pkts []packet
	if err := json.Unmarshal(body, &pkts); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("open: %d %s (%v)", resp.StatusCode, body, err)
	}
	var types []string
	for _, p := range pkts {
		types = append(types, p.T+":"+p.Ch+":"+strconv.FormatInt(p.ID, 10))
	}
	want := "hello::0 ok:demo.a:0 ok:demo.b:3 err::4"
	if got := strings.Join(types, " "); got != want {
		t.Fatalf("first response %s, want %s", got, want)
	}
	if resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("Content-Type %q", resp.Header.Get("Content-Type"))
	}

	// A malformed body is refused before any session opens.
	resp, err = n.client.Post(n.url("/poll?ch=demo.a"), "text/plain", strings.NewReader(`[{"op":"sub"`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"code":4000`) {
		t.Fatalf("malformed body: %d %s", resp.StatusCode, body)
	}
	if c := n.gw.SessionCount(); c != 1 {
		t.Fatalf("%d sessions, want 1", c)
	}
}

// TestHeartbeat: an idle poll is answered with an empty batch, an idle
// stream gets its heartbeat line.
func TestHeartbeat(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			n := startNode(t, nil, nil) // heartbeat 1s
			c := k.new(t, n)
			subscribed(t, c, "demo.idle")
			switch c := c.(type) {
			case pollAdapter:
				if pkts := c.poll(); len(pkts) != 0 {
					t.Fatalf("idle poll answered with %d packets", len(pkts))
				}
			case streamAdapter:
				for c.beats == 0 {
					p, beat, _ := c.read(false)
					if !beat {
						t.Fatalf("idle stream sent %+v", p)
					}
				}
				if c.streams != 1 {
					t.Fatalf("the stream was reopened")
				}
			}
		})
	}
}

// TestExpiry: a session without a request for the disconnect delay ends;
// later requests for it learn so (404, code 4004).
func TestExpiry(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			n := startNode(t, func(c *gateway.Config) { c.DisconnectDelay = 200 * time.Millisecond }, nil)
			c := k.new(t, n)
			subscribed(t, c, "demo.e")
			sid := c.sessionID()
			if sc, ok := c.(streamAdapter); ok {
				sc.drop()
			}
			waitFor(t, "the session to expire", func() bool { return n.gw.Session(sid) == nil })

			switch c := c.(type) {
			case pollAdapter:
				status, body := c.get(c.pollURL(c.acked))
				if !c.jsonp {
					expectJSONError(t, status, body, http.StatusNotFound, 4004)
					break
				}
				if status != http.StatusOK {
					t.Fatalf("jsonp: status %d", status)
				}
				expectControlClose(t, c.decode(body), 4004)
			case streamAdapter:
				p := c.path() + "/" + sid + "?ack=1"
				if c.html {
					p += "&cb=" + c.cb
				}
				req, _ := http.NewRequest(http.MethodPost, n.url(p), nil)
				if c.html {
					req.Method = http.MethodGet
				}
				resp, err := n.client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !c.html {
					expectJSONError(t, resp.StatusCode, body, http.StatusNotFound, 4004)
					break
				}
				if resp.StatusCode != http.StatusNotFound {
					t.Fatalf("htmlfile: status %d", resp.StatusCode)
				}
				line := body[bytes.LastIndex(body[:len(body)-1], []byte("\n"))+1:]
				payload, _ := c.unframe(string(line))
				var pk packet
				if err := json.Unmarshal(payload, &pk); err != nil {
					t.Fatalf("htmlfile refusal %q: %v", line, err)
				}
				expectControlClose(t, []packet{pk}, 4004)
			}

			// Upstream refuses it too.
			resp, err := n.client.Post(n.url("/session/"+sid+"/send"), "text/plain", strings.NewReader(`{"op":"ping","id":1}`))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			expectJSONError(t, resp.StatusCode, body, http.StatusNotFound, 4004)
			_, body = httpGet(t, n.client, n.url("/jsonp_send/"+sid+"?cb=s&d="+url.QueryEscape(`{"op":"ping"}`)))
			if string(body) != `/**/s({"ok":false,"code":4004,"error":"session not found"});` {
				t.Fatalf("jsonp_send after expiry: %s", body)
			}
		})
	}
}

func expectJSONError(t *testing.T, status int, body []byte, wantStatus, wantCode int) {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil || status != wantStatus || e.Code != wantCode || e.Error == "" {
		t.Fatalf("got %d %s, want %d with code %d", status, body, wantStatus, wantCode)
	}
}

func expectControlClose(t *testing.T, pkts []packet, code int) {
	t.Helper()
	if len(pkts) != 1 || pkts[0].T != gateway.TypeClose || pkts[0].Seq != nil || pkts[0].Code != code {
		t.Fatalf("got %+v, want one close packet without seq, code %d", pkts, code)
	}
}

// TestPollResendAfterDrop: a poll response that the client did not get
// (it read it but does not acknowledge it, or the connection broke while
// the response was on its way) comes again, same seq, same packets.
func TestPollResendAfterDrop(t *testing.T) {
	for _, jsonp := range []bool{false, true} {
		t.Run(map[bool]string{false: "polling", true: "jsonp"}[jsonp], func(t *testing.T) {
			n := startNode(t, func(c *gateway.Config) { c.Heartbeat = 30 * time.Second }, nil)
			c := newPollClient(t, n, jsonp)
			subscribed(t, pollAdapter{c}, "demo.d")
			n.publishN(t, "demo.d", 0, 5)

			// Dropped response 1: read, not acknowledged.
			_, body := c.get(c.pollURL(c.acked))
			lost := c.decode(body)
			if len(lost) == 0 || lost[0].seq() != c.acked+1 {
				t.Fatalf("first poll: %s", body)
			}
			_, body = c.get(c.pollURL(c.acked))
			again := c.decode(body)
			expectPrefix(t, again, lost)

			// Dropped response 2: the connection closes while the
			// response is on its way.
			conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.WriteString(conn, "GET "+c.pollURL(c.acked)+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(waitTimeout))
			status, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil || !strings.Contains(status, "200") {
				t.Fatalf("raw poll: %q %v", status, err)
			}
			conn.Close()

			pkts := c.poll() // checks seq continuity from the last ack
			expectPrefix(t, pkts, again)
			got := 0
			for _, p := range pkts {
				if p.T == gateway.TypeMsg {
					if p.index() != got {
						t.Fatalf("message %d where %d was due", p.index(), got)
					}
					got++
				}
			}
			for got < 5 {
				for _, p := range c.poll() {
					if p.index() != got {
						t.Fatalf("message %d where %d was due", p.index(), got)
					}
					got++
				}
			}
		})
	}
}

// expectPrefix checks that got starts with want: same seq, same packet.
func expectPrefix(t *testing.T, got, want []packet) {
	t.Helper()
	if len(got) < len(want) {
		t.Fatalf("resent %d packets, want at least %d", len(got), len(want))
	}
	for i := range want {
		g, _ := json.Marshal(got[i])
		w, _ := json.Marshal(want[i])
		if got[i].seq() != want[i].seq() || !bytes.Equal(g, w) {
			t.Fatalf("packet %d resent as %s, was %s", i, g, w)
		}
	}
}

// TestStreamResendAfterDrop: a stream breaks after the client got some
// packets; the next stream, acknowledging less than was written, gets the
// rest again with the same seq.
func TestStreamResendAfterDrop(t *testing.T) {
	for _, html := range []bool{false, true} {
		t.Run(map[bool]string{false: "xhr_streaming", true: "htmlfile"}[html], func(t *testing.T) {
			n := startNode(t, nil, nil)
			c := newStreamClient(t, n, html)
			subscribed(t, streamAdapter{c}, "demo.s")
			n.publishN(t, "demo.s", 0, 10)
			var got []packet
			for len(got) < 3 {
				if p := c.next(); p.T == gateway.TypeMsg {
					got = append(got, p)
				}
			}
			// The third message "was lost": the connection breaks and the
			// client acknowledges only the second.
			c.drop()
			c.acked = got[1].seq()
			p := c.next()
			if p.seq() != got[2].seq() || p.index() != 2 {
				t.Fatalf("after the drop: seq %d message %d, want seq %d message 2", p.seq(), p.index(), got[2].seq())
			}
			for want := 3; want < 10; {
				if p := c.next(); p.T == gateway.TypeMsg {
					if p.index() != want {
						t.Fatalf("message %d where %d was due", p.index(), want)
					}
					want++
				}
			}
			if c.streams != 2 {
				t.Fatalf("%d streams, want 2", c.streams)
			}
		})
	}
}

// TestPollReplaced: of two polls held for one session, the older one is
// answered with a transport-level close (3003) and the newer one carries
// the session.
func TestPollReplaced(t *testing.T) {
	for _, jsonp := range []bool{false, true} {
		t.Run(map[bool]string{false: "polling", true: "jsonp"}[jsonp], func(t *testing.T) {
			n := startNode(t, func(c *gateway.Config) { c.Heartbeat = 30 * time.Second }, nil)
			c := newPollClient(t, n, jsonp)
			subscribed(t, pollAdapter{c}, "demo.p")
			u := c.pollURL(c.acked)
			bodies := make(chan []byte, 2)
			var wg sync.WaitGroup
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := n.client.Get(n.url(u))
					if err != nil {
						t.Errorf("poll: %v", err)
						bodies <- nil
						return
					}
					defer resp.Body.Close()
					body, _ := io.ReadAll(resp.Body)
					bodies <- body
				}()
				time.Sleep(100 * time.Millisecond) // the order does not matter to the outcome
			}
			first := <-bodies
			expectControlClose(t, c.decode(first), gateway.DisconnectReplaced.Code)
			n.publishN(t, "demo.p", 0, 1)
			wg.Wait()
			pkts := c.decode(<-bodies)
			if len(pkts) != 1 || pkts[0].index() != 0 || pkts[0].seq() != c.acked+1 {
				t.Fatalf("the newer poll got %+v", pkts)
			}
		})
	}
}

// TestStreamReplaced: a second stream for a session ends the first with a
// transport-level close (3003) and carries what follows.
func TestStreamReplaced(t *testing.T) {
	for _, html := range []bool{false, true} {
		t.Run(map[bool]string{false: "xhr_streaming", true: "htmlfile"}[html], func(t *testing.T) {
			n := startNode(t, nil, nil)
			a := newStreamClient(t, n, html)
			subscribed(t, streamAdapter{a}, "demo.q")
			b := newStreamClient(t, n, html)
			b.sid, b.acked = a.sid, a.acked
			b.connect()
			var last packet
			for {
				p, beat, ok := a.read(false)
				if !ok {
					break
				}
				if !beat {
					last = p
				}
			}
			if last.T != gateway.TypeClose || last.Seq != nil || last.Code != gateway.DisconnectReplaced.Code || !last.Reconnect {
				t.Fatalf("the replaced stream ended with %+v", last)
			}
			n.publishN(t, "demo.q", 0, 1)
			if p := b.next(); p.index() != 0 {
				t.Fatalf("the newer stream got %+v", p)
			}
		})
	}
}

// TestPollShutdown: a held poll gets the session's close packet when the
// node drains.
func TestPollShutdown(t *testing.T) {
	n := startNode(t, func(c *gateway.Config) { c.Heartbeat = 30 * time.Second }, nil)
	c := newPollClient(t, n, false)
	subscribed(t, pollAdapter{c}, "demo.z")
	bodies := make(chan []byte, 1)
	go func() {
		resp, err := n.client.Get(n.url(c.pollURL(c.acked)))
		if err != nil {
			t.Errorf("poll: %v", err)
			bodies <- nil
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		bodies <- body
	}()
	time.Sleep(100 * time.Millisecond) // let the poll attach; if it does not, it still gets the close packet
	if err := n.gw.Shutdown(t.Context()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	got := c.decode(<-bodies)
	if len(got) != 1 || got[0].T != gateway.TypeClose || got[0].Code != gateway.DisconnectShutdown.Code || got[0].Seq == nil {
		t.Fatalf("held poll at shutdown got %+v", got)
	}
}

// TestPollAfterDrainClosed: once the drain has closed a session and its
// close packet went out (on the held poll), a request that comes after it
// for the session (a send racing the poll, the next poll) is told the
// drain's 3000, not "session not found".
func TestPollAfterDrainClosed(t *testing.T) {
	n := startNode(t, nil, nil)
	c := newPollClient(t, n, false)
	c.open("demo.z")
	sess := n.gw.Session(c.sid)
	if sess == nil {
		t.Fatal("no session")
	}
	shut := make(chan error, 1)
	go func() { shut <- n.gw.Shutdown(t.Context()) }()
	waitFor(t, "the drain to close the session", func() bool { return sess.Reason() == gateway.DisconnectShutdown })
	if got := c.poll(); len(got) != 1 || got[0].T != gateway.TypeClose || got[0].Code != gateway.DisconnectShutdown.Code {
		t.Fatalf("poll after the drain began: %+v", got)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	resp, err := n.client.Post(n.url("/session/"+c.sid+"/send"), "application/json", strings.NewReader(`{"op":"ping","id":1}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	expectJSONError(t, resp.StatusCode, body, http.StatusServiceUnavailable, gateway.DisconnectShutdown.Code)
	status, pbody := c.get(c.pollURL(c.acked))
	expectJSONError(t, status, pbody, http.StatusServiceUnavailable, gateway.DisconnectShutdown.Code)
}

// TestCallbackValidation: bad callback names are refused with a JSON 400;
// good ones are called.
func TestCallbackValidation(t *testing.T) {
	n := startNode(t, nil, nil)
	bad := []string{"", "a b", "1abc", "a..b", ".a", "a.", "alert(1)", "a<script>", "a-b", "a[0]", "é", "a\nb",
		strings.Repeat("a", 65), "a.1b"}
	for _, path := range []string{"/jsonp", "/htmlfile", "/jsonp_send/n1.x"} {
		for _, cb := range bad {
			status, body := httpGet(t, n.client, n.url(path+"?cb="+url.QueryEscape(cb)+"&d=%7B%7D"))
			expectJSONError(t, status, body, http.StatusBadRequest, 4000)
		}
		status, body := httpGet(t, n.client, n.url(path+"?d=%7B%7D"))
		expectJSONError(t, status, body, http.StatusBadRequest, 4000)
		status, body = httpGet(t, n.client, n.url(path+"?cb=a&cb=b&d=%7B%7D"))
		expectJSONError(t, status, body, http.StatusBadRequest, 4000)
	}
	for _, cb := range []string{"cb", "$", "_a.$b", "jQuery3_1", strings.Repeat("a", 64)} {
		c := newPollClient(t, n, true)
		c.cb = cb
		c.open("demo.c")
	}
}

// TestRequestValidation: malformed ack and session ids get a 400 naming
// the problem, in the transport's own way.
func TestRequestValidation(t *testing.T) {
	n := startNode(t, nil, nil)
	c := newPollClient(t, n, false)
	c.open("demo.v")
	for _, q := range []string{"ack=-1", "ack=abc", "ack=1&ack=2", "ack=99999999999999999999", "ack=", "ack=%zz", "ch=demo.x"} {
		status, body := c.get("/poll/" + c.sid + "?" + q)
		expectJSONError(t, status, body, http.StatusBadRequest, 4000)
	}
	status, body := c.get("/poll?ack=3")
	expectJSONError(t, status, body, http.StatusBadRequest, 4000)
	status, body = c.get("/poll/" + url.PathEscape("bad id!") + "?ack=1")
	expectJSONError(t, status, body, http.StatusBadRequest, 4000)
	status, body = c.get("/poll/" + strings.Repeat("a", 129))
	expectJSONError(t, status, body, http.StatusBadRequest, 4000)

	// JSONP names the problem inside its callback.
	status, body = c.get("/jsonp/" + c.sid + "?cb=cb&ack=x")
	if status != http.StatusOK || !strings.HasPrefix(string(body), `/**/cb([{"t":"close","code":4000,"reason":"\"ack\" must be`) {
		t.Fatalf("jsonp bad ack: %d %s", status, body)
	}
	// A session of another transport family is not theirs to carry.
	resp, err := n.client.Get(n.url("/sse?ch=demo.v"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('}')
	_, js, _ := strings.Cut(line, "data: ")
	var hello packet
	if err != nil || json.Unmarshal([]byte(js), &hello) != nil || hello.SID == "" {
		t.Fatalf("sse hello: %q %v", line, err)
	}
	status, body = c.get("/poll/" + hello.SID + "?ack=1")
	expectJSONError(t, status, body, http.StatusNotFound, 4004)
}

// TestScriptEscaping: a message that tries to end the script element (or
// the JavaScript string) reaches the callback intact and cannot break out
// of the htmlfile document or the JSONP script.
func TestScriptEscaping(t *testing.T) {
	const evil = "</script><script>alert(1)</script><!-- \u2028\u2029 &amp;"
	evilJSON, _ := json.Marshal(map[string]string{"s": evil})
	check := func(t *testing.T, raw string, pkts []packet) {
		t.Helper()
		if strings.ContainsAny(raw, "\u2028\u2029") {
			t.Fatalf("raw U+2028/U+2029 in %q", raw)
		}
		var texts, datas int
		for _, p := range pkts {
			if p.Text != nil && *p.Text == evil {
				texts++
			}
			var d map[string]string
			if p.Data != nil && json.Unmarshal(p.Data, &d) == nil && d["s"] == evil {
				datas++
			}
		}
		if texts != 1 || datas != 1 {
			t.Fatalf("payloads did not arrive intact: %d texts, %d data in %q", texts, datas, raw)
		}
	}
	t.Run("htmlfile", func(t *testing.T) {
		n := startNode(t, nil, nil)
		c := newStreamClient(t, n, true)
		subscribed(t, streamAdapter{c}, "demo.h")
		if err := n.gw.Publish(t.Context(), "demo.h", []byte(evil), ""); err != nil {
			t.Fatal(err)
		}
		if err := n.gw.Publish(t.Context(), "demo.h", evilJSON, ""); err != nil {
			t.Fatal(err)
		}
		var raw strings.Builder
		var pkts []packet
		for len(pkts) < 2 {
			p := c.next()
			// One script element per line: "<script>" opens it, and the
			// only other "<" is the "</script>" that closes it.
			if strings.Count(c.line, "<") != 2 || !strings.HasPrefix(c.line, "<script>p(") || !strings.HasSuffix(c.line, ");</script>\n") {
				t.Fatalf("packet line breaks out of its script element: %q", c.line)
			}
			raw.WriteString(c.line)
			pkts = append(pkts, p)
		}
		check(t, raw.String(), pkts)
	})
	t.Run("jsonp", func(t *testing.T) {
		n := startNode(t, nil, nil)
		c := newPollClient(t, n, true)
		subscribed(t, pollAdapter{c}, "demo.h")
		if err := n.gw.Publish(t.Context(), "demo.h", []byte(evil), ""); err != nil {
			t.Fatal(err)
		}
		if err := n.gw.Publish(t.Context(), "demo.h", evilJSON, ""); err != nil {
			t.Fatal(err)
		}
		var raw strings.Builder
		var pkts []packet
		for len(pkts) < 2 {
			_, body := c.get(c.pollURL(c.acked))
			if bytes.ContainsAny(body, "<>") {
				t.Fatalf("JSONP body contains < or >: %q", body)
			}
			raw.Write(body)
			batch := c.decode(body)
			pkts = append(pkts, batch...)
			if len(batch) > 0 {
				c.acked = batch[len(batch)-1].seq()
			}
		}
		check(t, raw.String(), pkts)
	})
}

// TestCORS: an allowed Origin gets CORS headers with credentials; another
// one is refused, on open and on later requests.
func TestCORS(t *testing.T) {
	n := startNode(t, nil, func(o *Options) { o.AllowedOrigins = []string{"http://app.example"} })
	do := func(method, path, origin string) (*http.Response, []byte) {
		req, _ := http.NewRequest(method, n.url(path), nil)
		req.Header.Set("Origin", origin)
		resp, err := n.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}
	resp, body := do(http.MethodPost, "/poll?ch=demo.o", "http://app.example")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "http://app.example" ||
		resp.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Fatalf("allowed origin: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	var pkts []packet
	_ = json.Unmarshal(body, &pkts)
	if len(pkts) == 0 || pkts[0].SID == "" {
		t.Fatalf("open: %s", body)
	}
	resp, body = do(http.MethodPost, "/poll?ch=demo.o", "http://evil.example")
	expectJSONError(t, resp.StatusCode, body, http.StatusForbidden, 4003)
	resp, body = do(http.MethodGet, "/poll/"+pkts[0].SID+"?ack=2", "http://evil.example")
	expectJSONError(t, resp.StatusCode, body, http.StatusForbidden, 4003)
	resp, _ = do(http.MethodOptions, "/xhr_stream/"+pkts[0].SID, "http://app.example")
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Methods") == "" {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	if c := n.gw.SessionCount(); c != 1 {
		t.Fatalf("%d sessions, want 1", c)
	}
}

// TestPollResponseHeaderBytes measures what a long-poll response costs
// beyond its body: the status line and headers as they go on the wire
// (no Origin, so no CORS headers).
func TestPollResponseHeaderBytes(t *testing.T) {
	n := startNode(t, nil, nil)
	c := newPollClient(t, n, false)
	c.open("demo.hdr")
	conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(conn, "GET "+c.pollURL(c.acked)+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	var head strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading head: %v (%q)", err, head.String())
		}
		head.WriteString(line)
		if line == "\r\n" {
			break
		}
	}
	t.Logf("long-poll response head, %d bytes:\n%s", head.Len(), head.String())
	for _, h := range []string{"Cache-Control: no-store, no-transform\r\n", "X-Accel-Buffering: no\r\n",
		"Content-Type: application/json\r\n", "Content-Length: 2\r\n"} {
		if !strings.Contains(head.String(), h) {
			t.Errorf("missing %q", h)
		}
	}
	if head.Len() > 200 {
		t.Errorf("response head is %d bytes, budget 200", head.Len())
	}
}

// TestStreamSessionHeader: the response that opens an XHR stream names
// its session in a header, so a client that never sees the stream's body
// (a buffering proxy holds it) can attach to the session by long-polling
// and get everything from the hello on, messages published meanwhile
// included.
func TestStreamSessionHeader(t *testing.T) {
	n := startNode(t, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url("/xhr_stream?ch=demo.buffered"), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sid := resp.Header.Get(HeaderSession)
	if err := parseSID(sid); err != nil || resp.Header.Get("Access-Control-Expose-Headers") != HeaderSession {
		t.Fatalf("stream headers: %s %q, Access-Control-Expose-Headers %q (%v)", HeaderSession, sid,
			resp.Header.Get("Access-Control-Expose-Headers"), err)
	}
	// The session subscribed before the headers went out.
	n.publishN(t, "demo.buffered", 0, 3)
	cancel()
	resp.Body.Close()

	// Long-polls attach to the stream's session: the first gets what the
	// stream wrote and nobody acknowledged (hello, ok), then the messages,
	// as they reach the session (a confirmed publish may not have yet).
	var pkts []packet
	var msgs []int
	deadline := time.Now().Add(30 * time.Second)
	for len(msgs) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("30 s of polls got %+v", pkts)
		}
		url := n.url("/poll/" + sid)
		if len(pkts) > 0 {
			url += fmt.Sprintf("?ack=%d", pkts[len(pkts)-1].seq())
		}
		presp, err := n.client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		var batch []packet
		err = json.NewDecoder(presp.Body).Decode(&batch)
		presp.Body.Close()
		if err != nil || presp.StatusCode != http.StatusOK {
			t.Fatalf("poll: %d %v", presp.StatusCode, err)
		}
		for _, p := range batch {
			if p.seq() != uint64(len(pkts)+1) {
				t.Fatalf("packet %d has seq %d: %+v then %+v", len(pkts), p.seq(), pkts, batch)
			}
			pkts = append(pkts, p)
			if p.T == gateway.TypeMsg {
				msgs = append(msgs, p.index())
			}
		}
	}
	if pkts[0].T != gateway.TypeHello || pkts[0].SID != sid || pkts[1].T != gateway.TypeOK || fmt.Sprint(msgs) != "[0 1 2]" {
		t.Fatalf("the polls got %+v", pkts)
	}

	// Opening a poll names no session in a header: its body has the hello.
	oresp, err := n.client.Get(n.url("/poll?ch=demo.x"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, oresp.Body)
	oresp.Body.Close()
	if h := oresp.Header.Get(HeaderSession); h != "" {
		t.Fatalf("a poll's open response names session %q", h)
	}
}
