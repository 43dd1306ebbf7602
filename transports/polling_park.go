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

// Parked requests: the design is in polling.go's comments ("Parked
// requests"); this file is its mechanism.

// parkedConn is the connection of a parked request and what its
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

// parkLocked parks t's request instead of holding it on the handler
// goroutine, when it can: an HTTP/1.1 request without TLS whose body
// net/http has read, on a node with a poller whose Server.Reentry was
// asked for (to be served); a poll only when the session has nothing to answer it
// with yet, a stream before its prelude. It reports whether it did; the
// handler then returns. t.wmu is held.
func (n *node) parkLocked(r *http.Request, t *httpDown, bodyRead bool) bool {
	l := n.reentry.Load()
	if l == nil || !bodyRead || r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.TLS != nil || t.started || t.ended {
		return false
	}
	// A poll the session answers at once is cheaper held: the hijack,
	// the poller and the way back through the listener cost more than a
	// goroutine that waits for a moment (see BenchmarkParkedPollCycle).
	if !t.fam.streaming && !t.sess.Waiting(t) {
		return false
	}
	p := n.idlePoller()
	if p == nil {
		return false
	}
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

// parkLater parks a poll that is still waiting after Options.ParkAfter,
// and reports whether it did; else the request ended meanwhile, or
// cannot be parked, and hold finishes it.
func (n *node) parkLater(r *http.Request, t *httpDown, bodyRead bool) bool {
	if n.reentry.Load() == nil || !bodyRead {
		return false // not worth a timer
	}
	timer := time.NewTimer(n.opts.ParkAfter)
	defer timer.Stop()
	select {
	case <-t.done:
		return false
	case <-r.Context().Done():
		return false
	case <-timer.C:
	}
	t.wmu.Lock()
	defer t.wmu.Unlock()
	return n.parkLocked(r, t, bodyRead)
}

// writeParkedLocked writes b to a parked request, in one write: a poll's
// whole response (head, Date, Content-Length, body); a stream's next
// chunk, after the head and the prelude on its first write, and the end
// of the chunked body once StreamLimit is reached. A write that ends the
// response takes the connection off the poller first and has write give
// it back once wmu is released. t.wmu is held.
func (t *httpDown) writeParkedLocked(b []byte) (int, error) {
	pk := t.pk
	if pk.taken {
		return 0, errRequestEnded
	}
	if len(b) == 0 && (t.started || !t.fam.streaming) {
		return 0, nil
	}
	t.dmu.Lock()
	if t.closed {
		t.dmu.Unlock()
		return 0, errRequestEnded // finishParked answers
	}
	_ = pk.conn.SetWriteDeadline(time.Now().Add(t.n.opts.WriteTimeout))
	t.dmu.Unlock()
	buf := getBuffer(len(pk.head) + 128 + len(b))
	var n int
	var last bool
	*buf, n, last = t.appendParked(*buf, b, false)
	if last {
		pk.taken, t.ended = true, true
		if pk.reg != nil {
			pk.reg.remove()
		}
	}
	if lw, ok := t.f.(lastWriter); ok && last {
		lw.lastWrite()
	}
	_, err := pk.conn.Write(*buf)
	putBuffer(buf)
	switch {
	case err != nil:
		pk.taken, t.ended = true, true
		t.end(gateway.DisconnectGone())
		t.handoff, t.handoffKeep = pk, false
		return 0, err
	case last && t.fam.streaming:
		// Closed before the connection goes back: a Close from now on
		// must not touch it (see Close).
		t.end(endRecycled)
		t.handoff, t.handoffKeep = pk, pk.keepAlive
	case last:
		t.end(endWritten)
		t.handoff, t.handoffKeep = pk, pk.keepAlive
	}
	return n, nil
}

// appendParked appends to out what the response of a parked request
// carries next: the head first (Content-Length for a poll, chunked for a
// stream, whose prelude opens the body), then b. A poll ends with b; a
// stream ends when it reached its limit or when end is set. It returns
// the body bytes appended and whether the response is complete. Only the
// connection's owner calls it (wmu held, or taken).
func (t *httpDown) appendParked(out, b []byte, end bool) ([]byte, int, bool) {
	pk := t.pk
	if !t.started && pk.keepAlive && t.n.gw.Draining() {
		// Once the node drains, the connection ends with this response,
		// as every response's that begins then does (drainWriter).
		pk.keepAlive = false
	}
	if !t.fam.streaming {
		t.started = true
		return append(pk.appendHead(out, len(b)), b...), len(b), true
	}
	var pre []byte
	if !t.started {
		t.started = true
		out = pk.appendHead(out, -1)
		pre = t.f.appendPrelude(nil)
	}
	n := len(pre) + len(b)
	if n > 0 {
		out = strconv.AppendInt(out, int64(n), 16)
		out = append(out, "\r\n"...)
		out = append(out, pre...)
		out = append(out, b...)
		out = append(out, "\r\n"...)
	}
	t.written += n
	end = end || t.written >= t.limit
	if end {
		out = append(out, "0\r\n\r\n"...)
	}
	return out, n, end
}

// appendHead appends the response head: the status line and headers
// rendered at park, Date, and Content-Length (length >= 0) or chunked
// transfer encoding, and Connection: close when the client asked for it.
func (pk *parkedConn) appendHead(out []byte, length int) []byte {
	out = append(out, pk.head...)
	out = append(out, "Date: "...)
	out = time.Now().UTC().AppendFormat(out, http.TimeFormat)
	if length >= 0 {
		out = append(out, "\r\nContent-Length: "...)
		out = strconv.AppendInt(out, int64(length), 10)
	} else {
		out = append(out, "\r\nTransfer-Encoding: chunked"...)
	}
	if !pk.keepAlive {
		out = append(out, "\r\nConnection: close"...)
	}
	return append(out, "\r\n\r\n"...)
}

// finishParked is hold for a parked request that a Close ended before a
// write completed it: it gives the session back and writes the end of
// the response hold would. It runs on a goroutine of the poller's (Close
// must not block), which the poller's close waits for.
func (t *httpDown) finishParked() {
	t.wmu.Lock()
	pk := t.pk
	if pk.taken {
		t.wmu.Unlock()
		return
	}
	pk.taken, t.ended = true, true
	t.wmu.Unlock()
	t.sess.Detach(t)
	t.dmu.Lock()
	t.gone = true
	reason := t.reason
	t.dmu.Unlock()
	if pk.reg != nil {
		pk.reg.remove()
	}
	buf := getBuffer(len(pk.head) + 256)
	*buf, _, _ = t.appendParked(*buf, t.endAnswer(t.started, reason), true)
	_ = pk.conn.SetWriteDeadline(time.Now().Add(t.n.opts.WriteTimeout))
	_, err := pk.conn.Write(*buf)
	putBuffer(buf)
	t.n.unpark(pk, err == nil && pk.keepAlive)
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
