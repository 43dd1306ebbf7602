//go:build linux

package transports

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/cometgate/cometgate/gateway"
)

// TestPollerManyConnections: hundreds of WebSocket and SSE connections
// at once on the poller, with the ways of talking and leaving: pings,
// requests, a close handshake, a dropped or half-closed socket, while
// messages flow (frames pipelined with the upgrade: TestWebSocketPipelined). Every client gets every message in
// order, every session ends, every slot of the poller's table is free
// again, and (under -race) nobody raced.
func TestPollerManyConnections(t *testing.T) {
	noLeaks(t)
	n := startNode(t, nil, nil)
	const clients = 200
	const messages = 20
	ready := make(chan struct{}, clients)
	published := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pollerClient(n, i, ready, published, messages); err != nil {
				t.Errorf("client %d: %v", i, err)
			}
		}()
	}
	for range clients {
		<-ready
	}
	n.publishN(t, "demo.many", 0, messages)
	close(published)
	wg.Wait()
	waitFor(t, "every session to end", func() bool { return n.gw.SessionCount() == 0 })
	p := n.srv.idlePoller()
	p.mu.Lock()
	slots, free := len(p.slots), len(p.free)
	p.mu.Unlock()
	if slots == 0 || free != slots {
		t.Errorf("%d of %d poller slots free after every connection left", free, slots)
	}
	waitReaders(t, n)
}

// pollerClient is one client of TestPollerManyConnections; how it behaves
// depends on i.
func pollerClient(n *testNode, i int, ready chan<- struct{}, published <-chan struct{}, messages int) error {
	signalled := false
	signal := func() {
		if !signalled {
			signalled = true
			ready <- struct{}{}
		}
	}
	defer signal() // a client that failed early must not hold the others up
	const sub = `{"op":"sub","id":1,"ch":"demo.many"}`
	if i%4 == 3 { // SSE, subscribed in the URL
		resp, err := n.client.Get(n.url("/sse?ch=demo.many"))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		r := newSSEReader(resp.Body)
		for got := 0; got < messages; {
			p, err := r.next()
			if err != nil {
				return fmt.Errorf("after %d messages: %w", got, err)
			}
			switch p.T {
			case gateway.TypeOK:
				signal()
			case gateway.TypeMsg:
				if p.index() != got {
					return fmt.Errorf("message %d where %d was due", p.index(), got)
				}
				got++
			}
		}
		return nil // the body closes: the node notices through the poller
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	d := ws.Dialer{}
	conn, br, _, err := d.Dial(ctx, "ws"+strings.TrimPrefix(n.url("/ws"), "http"))
	if err != nil {
		return err
	}
	defer conn.Close()
	if br != nil {
		conn = withBuffered(conn, br)
		ws.PutReader(br)
	}
	if err := wsutil.WriteClientText(conn, []byte(sub)); err != nil {
		return err
	}
	if i%4 == 1 { // requests and pings between the messages
		for k := range 3 {
			if err := wsutil.WriteClientText(conn, fmt.Appendf(nil, `{"op":"ping","id":%d}`, 10+k)); err != nil {
				return err
			}
			if err := wsutil.WriteClientMessage(conn, ws.OpPing, []byte("p")); err != nil {
				return err
			}
		}
	}
	got := 0
	for got < messages {
		data, err := wsutil.ReadServerText(conn) // answers pings
		if err != nil {
			return fmt.Errorf("after %d messages: %w", got, err)
		}
		var p packet
		if err := json.Unmarshal(data, &p); err != nil {
			return err
		}
		switch {
		case p.T == gateway.TypeOK && p.ID == 1:
			signal()
		case p.T == gateway.TypeMsg:
			if p.index() != got {
				return fmt.Errorf("message %d where %d was due", p.index(), got)
			}
			got++
		}
	}
	switch i % 4 {
	case 0, 1: // the close handshake
		if err := wsutil.WriteClientMessage(conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "")); err != nil {
			return err
		}
		// Read up to the node's close frame, without answering it (the
		// client began the handshake): the node may close the socket as
		// soon as its answer is out, and a reply would meet a reset.
		for {
			h, err := ws.ReadHeader(conn)
			if err != nil {
				return fmt.Errorf("after the close frame: %v", err)
			}
			if _, err := io.CopyN(io.Discard, conn, h.Length); err != nil {
				return fmt.Errorf("after the close frame: %v", err)
			}
			if h.OpCode == ws.OpClose {
				return nil
			}
		}
	default: // the socket just goes
		if tc, ok := conn.(interface{ CloseWrite() error }); ok && i%8 == 2 {
			return tc.CloseWrite() // half-closed: the node sees EOF
		}
		return nil
	}
}

// sseReader reads packets from an SSE stream without failing the test
// from its goroutine: errors are returned.
type sseReader struct{ br *bufio.Reader }

func newSSEReader(r io.Reader) *sseReader { return &sseReader{br: bufio.NewReader(r)} }

func (r *sseReader) next() (packet, error) {
	for {
		line, err := r.br.ReadString('\n')
		if err != nil {
			return packet{}, err
		}
		data, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "data: ")
		if !ok {
			continue // comments, ids, retry, blank lines
		}
		var p packet
		if err := json.Unmarshal([]byte(data), &p); err != nil {
			return packet{}, fmt.Errorf("bad packet %q: %w", data, err)
		}
		return p, nil
	}
}

var _ net.Conn = (*bufferedConn)(nil)
