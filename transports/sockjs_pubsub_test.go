package transports

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// sjsFrameMessages decodes an "a" frame into its messages.
func sjsFrameMessages(t *testing.T, frame string) []string {
	t.Helper()
	frame = strings.TrimRight(frame, "\n")
	if !strings.HasPrefix(frame, "a") {
		t.Fatalf("not a message frame: %q", frame)
	}
	var msgs []string
	if err := json.Unmarshal([]byte(frame[1:]), &msgs); err != nil {
		t.Fatalf("frame %q: %v", frame, err)
	}
	return msgs
}

// sjsPacket is the part of a gateway packet the tests look at.
type sjsPacket struct {
	Seq    uint64          `json:"seq"`
	T      string          `json:"t"`
	ID     int64           `json:"id"`
	Ch     string          `json:"ch"`
	Code   int             `json:"code"`
	Reason string          `json:"reason"`
	Data   json.RawMessage `json:"data"`
}

func sjsPackets(t *testing.T, frame string) []sjsPacket {
	t.Helper()
	var out []sjsPacket
	for _, m := range sjsFrameMessages(t, frame) {
		var p sjsPacket
		if err := json.Unmarshal([]byte(m), &p); err != nil {
			t.Fatalf("packet %q: %v", m, err)
		}
		out = append(out, p)
	}
	return out
}

// In pubsub mode a SockJS session speaks the native wire format: a
// streaming receiver gets the hello, answers and every published message,
// in order and without loss across recycled responses.
func TestSockJSPubSubStreaming(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/pubsub", ResponseLimit: 4096}}, nil)
	url := n.url("/pubsub/000/" + sjsSID())
	st := n.stream(t, http.MethodPost, url+"/xhr_streaming")
	st.read(2049)
	if got := st.until("\n"); got != "o\n" {
		t.Fatalf("open %q", got)
	}
	hello := sjsPackets(t, st.until("\n"))
	if len(hello) != 1 || hello[0].T != "hello" || hello[0].Seq != 1 {
		t.Fatalf("hello %+v", hello)
	}
	sub, _ := json.Marshal([]string{`{"op":"sub","id":1,"ch":"demo.feed"}`})
	if r := n.do(t, http.MethodPost, url+"/xhr_send", string(sub)); r.status != http.StatusNoContent {
		t.Fatalf("sub: %d %q", r.status, r.body)
	}
	if ok := sjsPackets(t, st.until("\n")); len(ok) != 1 || ok[0].T != "ok" || ok[0].ID != 1 {
		t.Fatalf("sub answer %+v", ok)
	}

	const total = 1000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			if err := n.gw.Publish(context.Background(), "demo.feed", fmt.Appendf(nil, `{"i":%d}`, i), ""); err != nil {
				t.Errorf("publish %d: %v", i, err)
				return
			}
		}
	}()
	next, seq, responses := 0, uint64(2), 1
	for next < total {
		line, err := st.r.ReadString('\n')
		if err != nil {
			// The response reached its limit: the client opens the next.
			st.eof()
			st = n.stream(t, http.MethodPost, url+"/xhr_streaming")
			st.read(2049)
			responses++
			continue
		}
		if line == "h\n" {
			continue
		}
		for _, p := range sjsPackets(t, line) {
			seq++
			if p.T != "msg" || p.Seq != seq || string(p.Data) != fmt.Sprintf(`{"i":%d}`, next) {
				t.Fatalf("packet %+v (%s), want msg seq %d i %d", p, p.Data, seq, next)
			}
			next++
		}
	}
	<-done
	if responses < 2 {
		t.Errorf("%d responses carried %d messages: the response limit did not recycle", responses, total)
	}
}

// Upstream: a publish from a SockJS client reaches a subscriber on another
// transport (here: a SockJS websocket).
func TestSockJSPubSubPublish(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/pubsub", Websocket: true}}, nil)
	c := sjsDialWS(t, n.url("/pubsub/000/"+sjsSID()+"/websocket"), nil)
	if c.recv() != "o" {
		t.Fatal("open")
	}
	if p := sjsPackets(t, c.recv()); p[0].T != "hello" {
		t.Fatalf("hello %+v", p)
	}
	c.send(`["{\"op\":\"sub\",\"id\":1,\"ch\":\"demo.chat\"}"]`)
	if p := sjsPackets(t, c.recv()); p[0].T != "ok" || p[0].ID != 1 {
		t.Fatalf("sub %+v", p)
	}

	url := n.url("/pubsub/000/" + sjsSID())
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "o\n" {
		t.Fatalf("open %q", r.body)
	}
	n.do(t, http.MethodPost, url+"/xhr", "") // the hello
	pub, _ := json.Marshal([]string{`{"op":"pub","id":5,"ch":"demo.chat","data":{"text":"hi <b>"}}`, `{"op":"nonsense","id":6}`})
	if r := n.do(t, http.MethodPost, url+"/xhr_send", string(pub)); r.status != http.StatusNoContent {
		t.Fatalf("pub: %d", r.status)
	}
	var answers []sjsPacket
	for len(answers) < 2 {
		r := n.do(t, http.MethodPost, url+"/xhr", "")
		if r.body == "h\n" {
			continue
		}
		answers = append(answers, sjsPackets(t, r.body)...)
	}
	ids := map[int64]string{}
	for _, a := range answers {
		ids[a.ID] = a.T
	}
	if ids[5] != "ok" || ids[6] != "err" {
		t.Fatalf("answers %+v", answers)
	}
	p := sjsPackets(t, c.recv())
	if p[0].T != "msg" || p[0].Ch != "demo.chat" || string(p[0].Data) != `{"text":"hi \u003cb\u003e"}` {
		t.Fatalf("delivery %+v %s", p, p[0].Data)
	}
}

// The gateway's close reaches the client as the close packet and then as
// the SockJS close frame with the same code; a frame over the size limit
// closes with 4001.
func TestSockJSPubSubClose(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/pubsub"}}, func(c *gateway.Config, _ *Options) { c.MaxFrameBytes = 256 })
	url := n.url("/pubsub/000/" + sjsSID())
	st := n.stream(t, http.MethodGet, url+"/eventsource")
	st.read(2)
	st.until("\r\n\r\n")                   // o
	hello := st.until("\r\n\r\n")          // the hello
	if !strings.Contains(hello, "hello") { // quoted JSON inside the frame
		t.Fatalf("hello %q", hello)
	}
	big, _ := json.Marshal([]string{`{"op":"ping","id":1,"pad":"` + strings.Repeat("x", 300) + `"}`})
	n.do(t, http.MethodPost, url+"/xhr_send", string(big))
	ev := strings.TrimSuffix(strings.TrimPrefix(st.until("\r\n\r\n"), "data: "), "\r\n\r\n")
	if p := sjsPackets(t, ev); len(p) != 1 || p[0].T != "close" || p[0].Code != 4001 {
		t.Fatalf("close packet %q", ev)
	}
	if got := st.until("\r\n\r\n"); got != "data: c[4001,\"frame too large\"]\r\n\r\n" {
		t.Fatalf("close frame %q", got)
	}
	st.eof()
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "c[4001,\"frame too large\"]\n" {
		t.Fatalf("next request %q", r.body)
	}
}

// Draining the node closes every SockJS session with 3000 and refuses new
// ones in-band, so clients reconnect elsewhere.
func TestSockJSShutdown(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/pubsub"}, {Prefix: "/echo", Mode: SockJSEcho}}, nil)
	ps := n.stream(t, http.MethodPost, n.url("/pubsub/000/"+sjsSID()+"/xhr_streaming"))
	ps.read(2049)
	ps.until("\n") // o
	ps.until("\n") // hello
	eurl := n.url("/echo/000/" + sjsSID())
	es := n.stream(t, http.MethodPost, eurl+"/xhr_streaming")
	es.read(2049)
	es.until("\n")
	sjsWaitFor(t, "both gateway sessions", func() bool { return n.gw.SessionCount() == 2 })

	ctx, cancel := context.WithTimeout(context.Background(), sjsWait)
	defer cancel()
	if err := n.gw.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if p := sjsPackets(t, ps.until("\n")); p[0].T != "close" || p[0].Code != 3000 {
		t.Fatalf("close packet %+v", p)
	}
	for _, st := range []*sjsStream{ps, es} {
		if got := st.until("\n"); got != "c[3000,\"server shutting down\"]\n" {
			t.Fatalf("close frame %q", got)
		}
		st.eof()
	}
	if r := n.do(t, http.MethodPost, n.url("/pubsub/000/"+sjsSID()+"/xhr"), ""); r.body != "c[3000,\"server shutting down\"]\n" {
		t.Fatalf("new session while draining: %d %q", r.status, r.body)
	}
	if r := n.do(t, http.MethodPost, eurl+"/xhr", ""); r.body != "c[3000,\"server shutting down\"]\n" {
		t.Fatalf("closed session while draining: %q", r.body)
	}
}

// A polling response carries one frame, so a session the drain closes
// with a message still to send ends before its close frame goes out: the
// frame answers the next poll. AwaitSockJSCloses holds the node (in the
// cluster, listening) until that poll came, and no longer.
func TestSockJSAwaitClosesAfterDrain(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/echo", Mode: SockJSEcho}}, nil)
	id := sjsSID()
	url := n.url("/echo/000/" + id)
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "o\n" {
		t.Fatalf("open %q", r.body)
	}
	if r := n.do(t, http.MethodPost, url+"/xhr_send", `["a"]`); r.status != http.StatusNoContent {
		t.Fatalf("send %d %q", r.status, r.body)
	}
	ep := n.srv.sjsEps[0]
	ep.mu.Lock()
	sess := ep.sessions[id].sess
	ep.mu.Unlock()
	// xhr_send answered once the echo was queued (SendData).

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), sjsWait)
		defer cancel()
		shut <- n.gw.Shutdown(ctx)
	}()
	sjsWaitFor(t, "the drain to close the session", func() bool { return sess.Reason() == gateway.DisconnectShutdown })
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "a[\"a\"]\n" {
		t.Fatalf("poll after the drain began %q", r.body)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// The session has ended; its close frame has not gone out.
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	n.srv.AwaitSockJSCloses(short)
	early := short.Err() == nil
	cancel()
	if early {
		t.Fatal("AwaitSockJSCloses returned before the close frame went out")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), sjsWait)
		defer cancel()
		n.srv.AwaitSockJSCloses(ctx)
	}()
	if r := n.do(t, http.MethodPost, url+"/xhr", ""); r.body != "c[3000,\"server shutting down\"]\n" {
		t.Fatalf("next poll %q", r.body)
	}
	select {
	case <-done:
	case <-time.After(sjsWait):
		t.Fatal("AwaitSockJSCloses still waiting after the close frame went out")
	}
}

// The per-address session limit and the Origin policy apply to SockJS.
func TestSockJSLimits(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/echo", Mode: SockJSEcho}}, func(_ *gateway.Config, o *Options) {
		o.MaxSessionsPerIP = 1
		o.AllowedOrigins = []string{"http://good.example"}
	})
	if r := n.do(t, http.MethodPost, n.url("/echo/000/"+sjsSID()+"/xhr"), ""); r.body != "o\n" {
		t.Fatalf("first session %q", r.body)
	}
	if r := n.do(t, http.MethodPost, n.url("/echo/000/"+sjsSID()+"/xhr"), ""); r.body != "c[4029,\"too many sessions from this address\"]\n" {
		t.Fatalf("second session %q", r.body)
	}
	url := n.url("/echo/000/" + sjsSID())
	for _, path := range []string{"/xhr", "/xhr_streaming", "/xhr_send", "/jsonp_send"} {
		r := n.do(t, http.MethodPost, url+path, `["x"]`, "Origin", "http://evil.example")
		if r.status != http.StatusForbidden {
			t.Errorf("%s from another site: %d", path, r.status)
		}
	}
	if r := n.do(t, http.MethodOptions, url+"/xhr", "", "Origin", "http://evil.example"); r.status != http.StatusForbidden {
		t.Errorf("preflight from another site: %d", r.status)
	}
	if r := n.do(t, http.MethodOptions, url+"/xhr", "", "Origin", "http://good.example"); r.status != http.StatusNoContent ||
		r.get("Access-Control-Allow-Origin") != "http://good.example" {
		t.Errorf("preflight from an allowed site: %d %q", r.status, r.get("Access-Control-Allow-Origin"))
	}
}

// A full outbox makes the sender wait for the client instead of growing
// without bound; nothing is lost.
func TestSockJSEchoBackpressure(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/echo", Mode: SockJSEcho}}, func(c *gateway.Config, _ *Options) { c.QueueBytes = 1024 })
	url := n.url("/echo/000/" + sjsSID())
	n.do(t, http.MethodPost, url+"/xhr", "")
	var msgs []string
	for i := range 10 {
		msgs = append(msgs, fmt.Sprintf("%d-%s", i, strings.Repeat("x", 400)))
	}
	body, _ := json.Marshal(msgs)
	ctx, cancel := context.WithTimeout(context.Background(), sjsWait)
	defer cancel()
	sent := make(chan int, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/xhr_send", strings.NewReader(string(body)))
		resp, err := n.client.Do(req)
		if err != nil {
			sent <- 0
			return
		}
		resp.Body.Close()
		sent <- resp.StatusCode
	}()
	var got []string
	for len(got) < len(msgs) {
		r := n.do(t, http.MethodPost, url+"/xhr", "")
		if r.body == "h\n" {
			continue
		}
		batch := sjsFrameMessages(t, r.body)
		if len(batch) > 3 {
			t.Fatalf("a poll carried %d messages of 400 bytes past a 1 KiB bound", len(batch))
		}
		got = append(got, batch...)
	}
	if status := <-sent; status != http.StatusNoContent {
		t.Fatalf("send: %d", status)
	}
	for i := range msgs {
		if got[i] != msgs[i] {
			t.Fatalf("message %d: %.20q", i, got[i])
		}
	}
}

func TestSockJSValidate(t *testing.T) {
	for _, tc := range []struct {
		eps  []SockJSEndpoint
		want string
	}{
		{[]SockJSEndpoint{{Prefix: "/t", Mode: SockJSTCP}}, "a tcp endpoint needs the name of a bridge target"},
		{[]SockJSEndpoint{{Prefix: "/t", Mode: SockJSTCP, Target: "db"}}, ""},
		{[]SockJSEndpoint{{Prefix: "/tcp", Mode: SockJSTCP, Target: "db"}}, "served by the node itself"},
		{[]SockJSEndpoint{{Prefix: "/t", Mode: "carrier-pigeon"}}, `mode: "carrier-pigeon" is not one of`},
		{[]SockJSEndpoint{{Prefix: "/t", Target: "db"}}, "only a tcp endpoint has a target"},
		{[]SockJSEndpoint{{Prefix: ""}}, "must start with /"},
		{[]SockJSEndpoint{{Prefix: "/sockjs/"}}, "must start with /"},
		{[]SockJSEndpoint{{Prefix: "/a//b"}}, "empty or dot segment"},
		{[]SockJSEndpoint{{Prefix: "/a b"}}, "only letters"},
		{[]SockJSEndpoint{{Prefix: "/ws"}}, "served by the node itself"},
		{[]SockJSEndpoint{{Prefix: "/API/x"}}, "served by the node itself"},
		{[]SockJSEndpoint{{Prefix: "/a"}, {Prefix: "/a"}}, "overlaps"},
		{[]SockJSEndpoint{{Prefix: "/a"}, {Prefix: "/a/b"}}, "overlaps"},
		{[]SockJSEndpoint{{Prefix: "/a", ResponseLimit: -1}}, "response_limit"},
		{[]SockJSEndpoint{{Prefix: "/a", HeartbeatDelay: time.Millisecond}}, "heartbeat_delay"},
		{[]SockJSEndpoint{{Prefix: "/a", DisconnectDelay: -time.Second}}, "disconnect_delay"},
		{[]SockJSEndpoint{{Prefix: "/a", ClientURL: "javascript:alert(1)"}}, "client_url"},
		{[]SockJSEndpoint{{Prefix: "/a", ClientURL: "//cdn.example/x.js"}}, "client_url"},
		{[]SockJSEndpoint{{Prefix: "/a", Mode: SockJSEcho, ClientURL: "/static/sockjs.js"}, {Prefix: "/ab"}}, ""},
	} {
		err := ValidateSockJS(tc.eps)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.eps, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: error %v, want %q", tc.eps, err, tc.want)
		}
	}
}

// New cannot fail: an endpoint it refuses answers 500 with the reason,
// and the other endpoints work.
func TestSockJSNewRefusesBadEndpoint(t *testing.T) {
	n := sjsStartNode(t, []SockJSEndpoint{{Prefix: "/db", Mode: SockJSTCP, Target: "db"}, {Prefix: "/echo", Mode: SockJSEcho}}, nil)
	r := n.do(t, http.MethodGet, n.url("/db/info"), "")
	if r.status != http.StatusInternalServerError || !strings.Contains(r.body, `target: "db" is not one of the bridge targets`) {
		t.Errorf("tcp endpoint: %d %q", r.status, r.body)
	}
	if r := n.do(t, http.MethodGet, n.url("/echo"), ""); r.status != http.StatusOK {
		t.Errorf("echo endpoint: %d", r.status)
	}
	// Nothing else of the node moved.
	if r := n.do(t, http.MethodGet, n.url("/healthz"), ""); r.status != http.StatusOK {
		t.Errorf("healthz: %d", r.status)
	}
}

// An endpoint mounted by New with a bad prefix is not mounted at all.
func TestSockJSBadPrefixNotMounted(t *testing.T) {
	gw := sjsStartNode(t, nil, nil).gw
	srv := New(Options{Gateway: gw, SockJS: []SockJSEndpoint{{Prefix: "/ws"}}, Logger: slog.New(slog.DiscardHandler)})
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ws/info", nil))
	if rec.Code == http.StatusOK {
		t.Errorf("/ws/info answered 200: %s", rec.Body)
	}
}
