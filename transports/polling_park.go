package transports

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// Parked long-polls: the design is in polling.go's comments ("Parked
// long-polls"); this file is its mechanism.

// parkedConn is the connection of a parked long-poll and what its
// response needs.
type parkedConn struct {
	conn      net.Conn // the hijacked connection (a bufferedConn when the client sent more)
	reg       *pollReg // the poller's registration; nil: not watched
	p         *poller  // runs finishParked
	l         *reentry // where the connection goes back to net/http
	head      []byte   // status line and headers, each line ended by CRLF
	keepAlive bool     // the client did not ask to close the connection

	// taken is guarded by the httpDown's wmu: whoever sets it (the write
	// that completes the response, finishParked, onInput) owns conn and
	// gives it back or closes it (unpark).
	taken bool
}

// park parks t's request instead of holding it on the handler goroutine,
// when it can: an HTTP/1.1 request without TLS whose body net/http has
// read, on a node with a poller and a served Server.Reentry, that the
// session has nothing to answer yet. It reports whether it did; the
// handler then returns at once.
func (n *node) park(r *http.Request, t *httpDown, bodyRead bool) bool {
	l := n.reentry.Load()
	if l == nil || !bodyRead || r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.TLS != nil {
		return false
	}
	// A request the session answers at once is cheaper held: the hijack,
	// the poller and the way back through the listener cost more than a
	// goroutine that waits for a moment.
	if !t.sess.Waiting(t) {
		return false
	}
	p := n.idlePoller()
	if p == nil {
		return false
	}
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if t.started || t.ended {
		return false
	}
	// Under wmu: a write that came first sets headers.
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\n")
	_ = t.w.Header().Write(&head)
	// Under dmu, so that a Close either came before (and hold answers)
	// or finds pk set (and finishParked answers).
	t.dmu.Lock()
	if t.closed {
		t.dmu.Unlock()
		return false
	}
	conn, brw, err := t.rc.Hijack()
	if err != nil {
		t.dmu.Unlock()
		return false
	}
	pk := &parkedConn{conn: conn, p: p, l: l, head: bytes.Clone(head.Bytes()), keepAlive: !r.Close}
	if brw.Reader.Buffered() > 0 {
		pk.conn = withBuffered(conn, brw.Reader)
	} else {
		pk.reg = n.watchIdle(conn, t.onInput)
	}
	n.readers.Add(1)
	n.parked.Add(1)
	t.pk = pk
	// The ResponseWriter holds net/http's connection state, its buffers
	// (some 10 KiB) and the request: let them go.
	t.w, t.rc = nil, nil
	t.dmu.Unlock()
	if pk.reg != nil {
		// onInput, if the client is already gone, waits for wmu.
		if err := pk.reg.arm(); err != nil {
			pk.reg.remove()
			pk.reg = nil
		}
	}
	if f := n.onPark.Load(); f != nil {
		(*f)()
	}
	return true
}

// writeParkedLocked writes the whole response of a parked request: its
// head, Date, Content-Length and body b, in one write. The connection
// leaves the poller first, and is given back once wmu is released
// (write). t.wmu is held.
func (t *httpDown) writeParkedLocked(b []byte) (int, error) {
	pk := t.pk
	if pk.taken {
		return 0, errRequestEnded
	}
	if len(b) == 0 {
		return 0, nil
	}
	t.dmu.Lock()
	if t.closed {
		t.dmu.Unlock()
		return 0, errRequestEnded // finishParked answers
	}
	_ = pk.conn.SetWriteDeadline(time.Now().Add(t.n.opts.WriteTimeout))
	t.dmu.Unlock()
	pk.taken, t.ended, t.started = true, true, true
	if pk.reg != nil {
		pk.reg.remove()
	}
	if lw, ok := t.f.(lastWriter); ok {
		lw.lastWrite()
	}
	err := pk.respond(b)
	// Closed before the connection goes back: a Close from now on must
	// not touch it (see Close).
	t.end(endWritten)
	t.handoff, t.handoffKeep = pk, err == nil && pk.keepAlive
	if err != nil {
		return 0, err
	}
	t.written = len(b)
	return len(b), nil
}

// respond writes the response with body b.
func (pk *parkedConn) respond(b []byte) error {
	buf := getBuffer(len(pk.head) + 96 + len(b))
	out := append(*buf, pk.head...)
	out = append(out, "Date: "...)
	out = time.Now().UTC().AppendFormat(out, http.TimeFormat)
	out = append(out, "\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(b)), 10)
	if !pk.keepAlive {
		out = append(out, "\r\nConnection: close"...)
	}
	out = append(out, "\r\n\r\n"...)
	out = append(out, b...)
	_, err := pk.conn.Write(out)
	*buf = out
	putBuffer(buf)
	return err
}

// finishParked is hold for a parked request that a Close ended before a
// write completed it: it gives the session back and writes the answer
// hold would. It runs on a goroutine of the poller's (Close must not
// block), which the poller's close waits for.
func (t *httpDown) finishParked() {
	t.wmu.Lock()
	pk := t.pk
	if pk.taken {
		t.wmu.Unlock()
		return
	}
	pk.taken, t.ended = true, true
	started := t.started
	t.wmu.Unlock()
	t.sess.Detach(t)
	t.dmu.Lock()
	t.gone = true
	reason := t.reason
	t.dmu.Unlock()
	keep := false
	if b := t.endAnswer(started, reason); len(b) > 0 {
		if pk.reg != nil {
			pk.reg.remove()
		}
		_ = pk.conn.SetWriteDeadline(time.Now().Add(t.n.opts.WriteTimeout))
		keep = pk.respond(b) == nil && pk.keepAlive
	}
	t.n.unpark(pk, keep)
}

// onInput runs when a parked connection has input: the client went away
// (EOF, RST), or sent a request before the held one was answered, which
// HTTP/1.1 allows but no browser does. Either way the connection ends
// and the request with it, as a held request ends when its context does.
func (t *httpDown) onInput() {
	t.wmu.Lock()
	pk := t.pk
	if pk.taken {
		t.wmu.Unlock() // the response went out meanwhile: not ours
		return
	}
	var b [1]byte
	_ = pk.conn.SetReadDeadline(time.Now().Add(time.Second)) // input is there; never wait long
	_, err := pk.conn.Read(b[:])
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// Woken with nothing to read: watch on.
		_ = pk.conn.SetReadDeadline(time.Time{})
		if pk.reg.arm() == nil {
			t.wmu.Unlock()
			return
		}
	}
	pk.taken, t.ended = true, true
	t.wmu.Unlock()
	t.end(gateway.DisconnectGone())
	t.sess.Detach(t)
	t.n.unpark(pk, false)
}

// unpark gives a parked request's connection back to net/http through
// the node's listener (keep), or closes it, and stops counting it as a
// reader of the node.
func (n *node) unpark(pk *parkedConn, keep bool) {
	n.parked.Add(-1)
	if pk.reg != nil {
		pk.reg.remove()
	}
	if keep {
		// net/http sets the deadlines it wants; leave none behind.
		if pk.conn.SetDeadline(time.Time{}) == nil && pk.l.push(pk.conn) {
			n.readers.Done()
			return
		}
	}
	_ = pk.conn.Close()
	n.readers.Done()
}
