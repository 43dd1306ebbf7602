package transports

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cometgate/cometgate/gateway"
)

// The TCP bridge: a browser session carries a byte stream to a TCP server
// the operator named (a chat server, a STOMP broker, Redis, a game server),
// so that the server needs no change to be reached from a page. It is the
// Orbited "TCPSocket" idea on cometgate's sessions.
//
// Two ways in: GET /tcp/{name} upgrades to a WebSocket whose binary frames
// are the bytes (the efficient way, for browsers that get a WebSocket
// through), and a SockJS endpoint in tcp mode, which gives every SockJS
// transport (streaming, polling, JSONP) to the same stream.
//
// Security is the reason this file is more than io.Copy:
//
//   - Targets are allow-listed by name. The browser names a target; it
//     never sends an address, so a page cannot turn the node into an open
//     proxy.
//   - Addresses that reach inside the operator's network are refused
//     unless the target lists their network in AllowNetworks: loopback,
//     private (RFC 1918, fc00::/7), link-local (which holds the cloud
//     metadata service at 169.254.169.254), shared (100.64.0.0/10),
//     unspecified, multicast and reserved addresses, and IPv6 prefixes
//     that embed IPv4 addresses (NAT64, 6to4, Teredo, IPv4-compatible)
//     or are deprecated (site-local). A host name that resolves
//     to such an address is refused the same way: the check applies to
//     the resolved address, not the name.
//   - DNS answers are pinned per connection: the node resolves the target
//     once, checks the answers, and dials exactly the addresses it
//     checked, so a name that changes its answer between the check and the
//     connect (DNS rebinding) cannot slip past.
//
// Backpressure, both ways: the bridge reads from the target only after the
// previous chunk was handed to the browser's connection (native WebSocket)
// or fitted into the session's bounded outbox (SockJS), and writes the
// browser's bytes to the target before it reads the next message. Each
// bridged session therefore holds at most one read buffer per direction
// and no queue that a fast side could grow.
//
// Close to the wire (native WebSocket, Linux): a small round trip through
// the bridge is two reads and two writes, and the bridge's own work around
// them is kept below theirs. The sockets are read and written with raw
// non-blocking system calls (fdConn, rawio_linux.go); read buffers
// come from pools and are held only while bytes are in them, a frame the
// buffer holds whole is unmasked and handed on in place, and the target's
// bytes are read behind room for the frame header, so one write sends
// header and payload. Each side is read by a goroutine while it is in
// use, which waits in Go's poller between messages (no goroutine started,
// no registration re-armed, no deadline set per message); once a side has
// been silent for its hold (idleHold: none for a side that has not shown
// itself busy, milliseconds for one that went quiet, up to
// bridgeIdleAfter for a busy one) it goes back to the node's poller
// (bridgeReader for the browser, pumpAsync for the target), so an idle
// bridged session holds no goroutine and no buffer. A SockJS session in
// tcp mode reads its target the same way (its browser's side is the
// SockJS session's).

// BridgeTarget is one TCP server browsers may reach through the bridge.
type BridgeTarget struct {
	// Name is what the browser asks for (/tcp/{name}): 1 to 64 characters
	// of [A-Za-z0-9_.-].
	Name string
	// Address is the target's host:port; a host name is resolved at every
	// connect.
	Address string
	// AllowNetworks lists networks this target may reach although the
	// policy refuses them (loopback, private, link-local, ...), e.g.
	// 127.0.0.0/8 for a server on the node's own host.
	AllowNetworks []netip.Prefix
	// RequireGrant lets only sessions whose token grants the target (the
	// "tcp" list of the token's cometgate claim) open it; otherwise any
	// page from an allowed Origin may.
	RequireGrant bool
	// MaxConnections bounds this node's open connections to the target,
	// so that browsers cannot exhaust what the server accepts; 0 means
	// no bound.
	MaxConnections int
	// MaxMessageBytes is the largest WebSocket message the bridge takes
	// from the browser for this target (a larger one closes with 1009);
	// 0 means DefaultBridgeMaxMessage. It is the bridge's own limit, not
	// the pub/sub frame limit: a bridged protocol has messages of its
	// own size (a STOMP body, a Redis SET). Each connection may hold one
	// message this big while it is written to the target.
	MaxMessageBytes int
	// Subprotocols are WebSocket subprotocols the target's clients offer
	// and the bridge may answer (e.g. "v12.stomp"), besides the two it
	// always speaks: "binary" (the bytes in binary messages; preferred
	// when offered) and "base64" (websockify's text mode: every message
	// base64 text, both ways; chosen only when nothing else offered is).
	// The first offered one of these is echoed; the bytes go in binary
	// messages, as with binary.
	Subprotocols []string
}

// Bridge message limits: DefaultBridgeMaxMessage when a target names none,
// and the bounds MaxMessageBytes must keep. The least is what
// cometgate.js's TCPSocket writes in one message at most.
const (
	DefaultBridgeMaxMessage = 1 << 20
	MinBridgeMaxMessage     = 64 << 10
	MaxBridgeMaxMessage     = 64 << 20
)

// The subprotocols the bridge always speaks.
const (
	bridgeBinary = "binary"
	bridgeBase64 = "base64"
)

// Validate checks a target's name and address.
func (t BridgeTarget) Validate() error {
	if !validTargetName(t.Name) {
		return fmt.Errorf("bridge target %q: name: 1 to 64 characters of [A-Za-z0-9_.-]", t.Name)
	}
	host, port, err := net.SplitHostPort(t.Address)
	if err != nil {
		return fmt.Errorf("bridge target %s: address %q: %v", t.Name, t.Address, err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("bridge target %s: address %q: port must be 1-65535", t.Name, t.Address)
	}
	if host == "" {
		return fmt.Errorf("bridge target %s: address %q: host is empty", t.Name, t.Address)
	}
	for _, n := range t.AllowNetworks {
		if !n.IsValid() {
			return fmt.Errorf("bridge target %s: allow_networks: invalid prefix", t.Name)
		}
	}
	if t.MaxConnections < 0 {
		return fmt.Errorf("bridge target %s: max_connections: must not be negative", t.Name)
	}
	if m := t.MaxMessageBytes; m != 0 && (m < MinBridgeMaxMessage || m > MaxBridgeMaxMessage) {
		return fmt.Errorf("bridge target %s: max_message_bytes: must be 0 (the default, %d) or %d to %d, got %d",
			t.Name, DefaultBridgeMaxMessage, MinBridgeMaxMessage, MaxBridgeMaxMessage, m)
	}
	for _, p := range t.Subprotocols {
		switch {
		case !validSubprotocol(p):
			return fmt.Errorf("bridge target %s: subprotocols: %q is not a token (RFC 9110: letters, digits and !#$%%&'*+-.^_`|~)", t.Name, p)
		case p == bridgeBinary || p == bridgeBase64:
			return fmt.Errorf("bridge target %s: subprotocols: %q is the bridge's own and always spoken; list only the target's", t.Name, p)
		}
	}
	return nil
}

// maxMessage is the target's message limit, the default filled in.
func (t BridgeTarget) maxMessage() int {
	if t.MaxMessageBytes == 0 {
		return DefaultBridgeMaxMessage
	}
	return t.MaxMessageBytes
}

// subprotocols are what the target's WebSocket speaks, in tiers: binary
// when offered, else the first offered one of the target's own, else
// base64.
func (t BridgeTarget) subprotocols() *wsSubprotocols {
	return &wsSubprotocols{tiers: [][]string{{bridgeBinary}, t.Subprotocols, {bridgeBase64}}}
}

func validTargetName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !sjsIsAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// ValidateBridge checks the targets (valid, names unique) and that every
// SockJS endpoint in tcp mode names one of them.
func ValidateBridge(targets []BridgeTarget, sockjs []SockJSEndpoint) error {
	names := make(map[string]bool, len(targets))
	for _, t := range targets {
		if err := t.Validate(); err != nil {
			return err
		}
		if names[t.Name] {
			return fmt.Errorf("bridge target %s: name repeats an earlier target", t.Name)
		}
		names[t.Name] = true
	}
	for _, e := range sockjs {
		if e.Mode == SockJSTCP && !names[e.Target] {
			return fmt.Errorf("sockjs %s: target: %q is not one of the bridge targets", e.Prefix, e.Target)
		}
	}
	return nil
}

// The ways a bridged session ends or is refused (codes from the gateway's
// close-code table). Each has the HTTP status of a refusal before a
// WebSocket upgrade (bridgeStatus) and the close code a session that has
// started gets.
var (
	bridgeClosed      = gateway.DisconnectTargetClosed
	bridgeUnreachable = gateway.DisconnectTargetUnreachable
	bridgeReset       = gateway.DisconnectTargetReset
	bridgeRefused     = gateway.DisconnectTargetRefused
	bridgeUnknown     = gateway.DisconnectTargetUnknown
	bridgeBusy        = gateway.DisconnectTargetBusy
	// bridgeNotGranted: the target needs a grant the session's token
	// does not carry.
	bridgeNotGranted = gateway.Disconnect{Code: gateway.DisconnectForbidden.Code, Reason: "the token does not grant this target"}
)

// bridgeStatus is the HTTP status that refuses a session with d.
func bridgeStatus(d gateway.Disconnect) int {
	switch d {
	case bridgeRefused, bridgeNotGranted:
		return http.StatusForbidden
	case bridgeUnknown:
		return http.StatusNotFound
	case bridgeBusy:
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// bridgeDialer connects to targets by name, applying the address policy.
type bridgeDialer struct {
	targets map[string]BridgeTarget
	open    map[string]*atomic.Int64 // connections per target with MaxConnections
	timeout time.Duration
	// lookup resolves a host name; net.DefaultResolver.LookupNetIP but for
	// tests.
	lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)
	log    func(msg string, args ...any)
}

// defaultBridgeDialTimeout bounds a connect when the options name none.
const defaultBridgeDialTimeout = 5 * time.Second

func newBridgeDialer(targets []BridgeTarget, timeout time.Duration, log func(string, ...any)) *bridgeDialer {
	if timeout <= 0 {
		timeout = defaultBridgeDialTimeout
	}
	d := &bridgeDialer{
		targets: make(map[string]BridgeTarget, len(targets)),
		open:    make(map[string]*atomic.Int64),
		timeout: timeout,
		lookup:  net.DefaultResolver.LookupNetIP,
		log:     log,
	}
	for _, t := range targets {
		d.targets[t.Name] = t
		if t.MaxConnections > 0 {
			d.open[t.Name] = new(atomic.Int64)
		}
	}
	return d
}

func (d *bridgeDialer) has(name string) bool {
	_, ok := d.targets[name]
	return ok
}

// target returns the target called name.
func (d *bridgeDialer) target(name string) (BridgeTarget, bool) {
	t, ok := d.targets[name]
	return t, ok
}

// dial connects a session acting for p (nil: anonymous) to the target
// called name, if the target lets p open it. Its error is one of the
// bridge disconnects; the details (which address, why) go to the log,
// not to the browser, which must learn nothing of the network behind the
// node.
func (d *bridgeDialer) dial(ctx context.Context, name string, p *gateway.Principal) (net.Conn, error) {
	t, ok := d.targets[name]
	if !ok {
		return nil, bridgeUnknown
	}
	if t.RequireGrant && !p.MayBridge(name) {
		return nil, bridgeNotGranted
	}
	if open := d.open[name]; open != nil {
		if open.Add(1) > int64(t.MaxConnections) {
			open.Add(-1)
			d.log("bridge: target busy", "target", name, "max_connections", t.MaxConnections)
			return nil, bridgeBusy
		}
		conn, err := d.connect(ctx, t)
		if err != nil {
			open.Add(-1)
			return nil, err
		}
		return &countedConn{Conn: conn, open: open}, nil
	}
	return d.connect(ctx, t)
}

// countedConn gives its slot of the target's MaxConnections back when it
// is closed (once, however often Close is called).
type countedConn struct {
	net.Conn
	open   *atomic.Int64
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.open.Add(-1)
	}
	return c.Conn.Close()
}

// connect resolves and dials t under the address policy.
func (d *bridgeDialer) connect(ctx context.Context, t BridgeTarget) (net.Conn, error) {
	name := t.Name
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	conn, allowed, err := dialChecked(ctx, d.lookup, t.Address, func(a netip.Addr) string {
		if inAny(a, t.AllowNetworks) {
			return ""
		}
		return refusedAddr(a)
	}, func(a netip.Addr, why string) {
		d.log("bridge: target address refused", "target", name, "addr", a, "why", why)
	})
	switch {
	case conn != nil:
		return conn, nil
	case allowed == 0 && err == nil:
		return nil, bridgeRefused
	case allowed == 0:
		d.log("bridge: resolving the target failed", "target", name, "err", err)
		return nil, bridgeUnreachable
	}
	d.log("bridge: connecting to the target failed", "target", name, "err", err)
	return nil, bridgeUnreachable
}

// refusedPrefixes are ranges the policy refuses beyond what netip.Addr's
// predicates name.
var refusedPrefixes = []struct {
	p   netip.Prefix
	why string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this network"}, // 0.0.0.0 reaches the host itself on Linux
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"}, // includes 255.255.255.255
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "NAT64"},
	{netip.MustParsePrefix("2002::/16"), "6to4"},
	{netip.MustParsePrefix("2001::/32"), "Teredo"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
	{netip.MustParsePrefix("100::/64"), "discard"},
}

// refusedAddr says why the policy refuses a, or "" when it does not.
func refusedAddr(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return "invalid"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsMulticast():
		return "multicast"
	}
	for _, r := range refusedPrefixes {
		if r.p.Contains(a) {
			return r.why
		}
	}
	return ""
}

// bridgeLink is a session's connection to its target. The native
// WebSocket dials before it upgrades and gets a link that is connected
// from the start; a SockJS session dials after it opened, so its link
// becomes ready later, and messages from the browser wait for it.
type bridgeLink struct {
	ready chan struct{} // closed once conn or err is set
	// dialCtx is for connecting; close cancels it. Both nil for a link
	// connected from the start.
	dialCtx    context.Context
	cancelDial context.CancelFunc

	mu   sync.Mutex
	conn net.Conn
	// fd does conn's reads and writes where it can (rawio_linux.go),
	// nil where it cannot; set with conn. Its reads are the pump's, into
	// pumpBuf.
	fd      *fdConn
	pumpBuf pumpBuffer
	// The pump parked in the node's poller while the target is idle
	// (pumpAsync): its registration, whether it is parked (guarded by
	// mu), and what it calls when it ends.
	pumpReg    *pollReg
	pumpParked bool
	pumpEnd    func(gateway.Disconnect)
	pumpIdle   pumpIdle
	err        error // why there is no conn (set with ready)
	closed     bool
}

// newBridgeLink returns a link whose connection is still to be made
// (connected, failed).
func newBridgeLink() *bridgeLink {
	ctx, cancel := context.WithCancel(context.Background())
	return &bridgeLink{ready: make(chan struct{}), dialCtx: ctx, cancelDial: cancel}
}

// newConnectedLink returns a link connected from the start (the native
// WebSocket dials before it upgrades): no dial to wait for or cancel, so
// no channel and context of its own either, a fifth of what an idle
// bridged connection keeps besides its sockets.
func newConnectedLink(conn net.Conn) *bridgeLink {
	l := &bridgeLink{ready: connectedReady}
	l.setConn(conn)
	return l
}

// connectedReady is the ready channel of every link connected from the
// start: closed.
var connectedReady = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// connected makes conn the link's connection. It reports false, having
// closed conn, when the link was closed meanwhile.
func (l *bridgeLink) connected(conn net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = conn.Close()
		return false
	}
	l.setConn(conn)
	close(l.ready)
	l.cancelDial() // releases the context; the connection is made
	return true
}

// setConn makes conn the link's connection, read and written with raw
// I/O where it can be.
func (l *bridgeLink) setConn(conn net.Conn) {
	l.conn = conn
	if c, ok := conn.(*countedConn); ok {
		conn = c.Conn
	}
	l.fd = newFDConn(conn, l.pumpBuf.take, l.pumpBuf.drop)
}

// failed records that connecting failed with err.
func (l *bridgeLink) failed(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil && l.err == nil {
		l.err = err
		close(l.ready)
	}
}

// close closes the connection (now or as soon as it is made), which ends
// the pump and unblocks a write in progress.
func (l *bridgeLink) close() {
	if l.cancelDial != nil {
		l.cancelDial()
	}
	l.mu.Lock()
	l.closed = true
	parked := l.pumpParked
	l.pumpParked = false
	if l.pumpReg != nil {
		l.pumpReg.remove() // before the close: a queued event finds no slot
	}
	if l.conn != nil {
		_ = l.conn.Close()
	}
	if l.conn == nil && l.err == nil {
		l.err = errBridgeClosed
		close(l.ready)
	}
	l.mu.Unlock()
	if parked {
		// No pump goroutine is there to see the connection closed.
		l.pumpEnd(gateway.DisconnectGone())
	}
}

var errBridgeClosed = errors.New("transports: bridge closed")

// write sends the browser's bytes to the target, waiting for the
// connection if it is still being made. It blocks while the target does
// not read: that is the backpressure towards the browser. ctx ends the
// wait for the connection, not a write in progress (closing the link
// does).
func (l *bridgeLink) write(ctx context.Context, p []byte) error {
	select {
	case <-l.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	if l.err != nil {
		return l.err
	}
	if l.fd != nil {
		_, err := l.fd.Write(p)
		return err
	}
	_, err := l.conn.Write(p)
	return err
}

// afterWriteError is how a session ends once writing the browser's bytes
// to the target failed with err. When connecting failed, with the dial's
// reason. When the browser's own request gave up waiting, as gone. Else
// the target most likely closed: the pump still delivers what it sent and
// ends the session with the right reason (1000 after an orderly close),
// so wait for that (ended), for lingerTimeout at most, before calling the
// target unreachable.
func (l *bridgeLink) afterWriteError(err error, ended <-chan struct{}) gateway.Disconnect {
	var d gateway.Disconnect
	switch {
	case errors.As(err, &d):
		return d
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return gateway.DisconnectGone()
	}
	t := time.NewTimer(lingerTimeout)
	defer t.Stop()
	select {
	case <-ended:
	case <-t.C:
	}
	return brokenLink(err)
}

// brokenLink is how a session ends when its established connection to
// the target failed with err: reset by the target (RST: the server
// aborted, crashed, or closed with data unread), or otherwise broken
// (timed out, the route went away), which is unreachable.
func brokenLink(err error) gateway.Disconnect {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return bridgeReset
	}
	return bridgeUnreachable
}

// bridgeChunk is the size of the buffer the target is read into: big
// enough that bulk transfers make few frames, small enough to be a
// modest cost per bridged session. bridgeBulkChunk is the size of the
// next read when one filled its buffer (a bulk transfer): with fewer,
// bigger reads and frames the system calls per byte, three quarters of
// the bridge's cost in bulk, fall by as much. Where the bridge reads
// with fdConn, its buffers come from pools for a read and its send only,
// so an idle bridged session holds none.
const (
	bridgeChunk     = 16 << 10
	bridgeBulkChunk = 64 << 10
)

// The pump's pooled buffers: headroom (at most maxServerHeader) plus a
// chunk.
var (
	pumpPool     = sync.Pool{New: func() any { b := make([]byte, maxServerHeader+bridgeChunk); return &b }}
	pumpBulkPool = sync.Pool{New: func() any { b := make([]byte, maxServerHeader+bridgeBulkChunk); return &b }}
)

// pumpBuffer is the pump's read buffer, taken from a pool for a read and
// its send, and given back before the pump waits for the target: an
// idle bridged session holds none. The pump owns it.
type pumpBuffer struct {
	headroom, chunk int
	// bulk: the last read filled its buffer; the next takes a bulk one.
	bulk bool
	pool *sync.Pool
	bp   *[]byte
}

// take returns where the next read goes: after the headroom, chunk bytes
// at most.
func (b *pumpBuffer) take() []byte {
	if b.bp == nil {
		b.pool = &pumpPool
		if b.bulk && b.chunk >= bridgeBulkChunk {
			b.pool = &pumpBulkPool
		}
		b.bp = b.pool.Get().(*[]byte)
	}
	return (*b.bp)[b.headroom : b.headroom+min(b.chunk, len(*b.bp)-maxServerHeader)]
}

// drop gives the buffer back.
func (b *pumpBuffer) drop() {
	if b.bp != nil {
		b.pool.Put(b.bp)
		b.bp = nil
	}
}

// pump copies what the target sends to the browser until either side
// ends, and returns how the session should end. It reads into a buffer
// after headroom bytes that send may use (for a frame header), and send
// gets buf[:headroom+n], which it must not keep. Reads are of chunk bytes
// at most (bridgeChunk, or bridgeBulkChunk when the send takes that much
// at once). It must be called after the link is ready.
func (l *bridgeLink) pump(headroom, chunk int, send func(frame []byte) error) gateway.Disconnect {
	if l.err != nil {
		if errors.Is(l.err, errBridgeClosed) {
			return gateway.DisconnectGone()
		}
		if d, ok := l.err.(gateway.Disconnect); ok {
			return d
		}
		return bridgeUnreachable
	}
	if l.fd == nil {
		buf := make([]byte, headroom+bridgeChunk)
		for {
			n, err := l.conn.Read(buf[headroom:])
			if d, over := l.pumped(buf[:headroom+n], n, err, send); over {
				return d
			}
		}
	}
	b := &l.pumpBuf
	b.headroom, b.chunk = headroom, chunk
	defer b.drop()
	for {
		n, err := l.fd.read(true)
		var frame []byte
		if n > 0 {
			frame = (*b.bp)[:headroom+n]
			b.bulk = n == min(chunk, len(*b.bp)-maxServerHeader)
		}
		d, over := l.pumped(frame, n, err, send)
		b.drop()
		if over {
			return d
		}
	}
}

// pumpIdle is a parking pump's read deadline: renewed only when it
// passes with bytes read since it was set, so that a busy target costs
// one deadline per hold (idleHold) rather than one per read. With no
// hold there is no deadline: the pump reads what is there and parks.
type pumpIdle struct {
	set    bool // the hold is chosen (and its deadline set) since the pump (re)started
	active bool // bytes were read since it was set
	busy   bool // the last one passed with bytes read: renew it longer
	hold   idleHold
}

// pumpAsync pumps (see pump) what the target sends and calls end, once,
// with how the session ends. Where the node has a poller and the link
// raw socket I/O, the target's connection starts in the poller, whose
// goroutine pumps on input and gives the connection back once the
// target has sent nothing for its hold: an idle bridged session keeps
// no goroutine (nor buffer) for its target. Elsewhere a goroutine pumps
// until the session ends. end is called on the pump's goroutine, or by
// close when the pump is parked. The link must be ready.
func (l *bridgeLink) pumpAsync(n *node, headroom, chunk int, send func(frame []byte) error, end func(gateway.Disconnect)) {
	var reg *pollReg
	if l.fd != nil && l.err == nil {
		conn := l.conn
		if c, ok := conn.(*countedConn); ok {
			conn = c.Conn
		}
		reg = n.watchIdle(conn, func() { l.unpark(headroom, chunk, send) })
	}
	// The session may have closed the link already (it reads the
	// browser from its upgrade on).
	l.mu.Lock()
	l.pumpEnd = end
	if l.closed && reg != nil {
		reg.remove()
		reg = nil
	}
	l.pumpReg = reg
	l.mu.Unlock()
	if reg == nil {
		go func() { end(l.pump(headroom, chunk, send)) }()
		return
	}
	if !l.park() {
		// Closed meanwhile (close saw no parked pump to end), or the
		// poller refused the connection.
		end(gateway.DisconnectGone())
	}
}

// pumpParking is the pump of pumpAsync with a poller: it pumps until the
// session ends (and calls pumpEnd) or the target is idle (and parks).
func (l *bridgeLink) pumpParking(headroom, chunk int, send func(frame []byte) error) {
	b := &l.pumpBuf
	b.headroom, b.chunk = headroom, chunk
	idle := &l.pumpIdle
	for {
		if !idle.set {
			now := time.Now()
			if hold := idle.hold.next(now, idle.busy); hold == 0 {
				_ = l.conn.SetReadDeadline(time.Time{}) // a passed one would fail a read that does not wait
			} else {
				_ = l.conn.SetReadDeadline(now.Add(hold))
			}
			idle.set, idle.active, idle.busy = true, false, false
		}
		drain := idle.hold.d == 0 // no hold: read without waiting, park when drained
		n, err := l.fd.read(!drain)
		var frame []byte
		if n > 0 {
			frame = (*b.bp)[:headroom+n]
			b.bulk = n == min(chunk, len(*b.bp)-maxServerHeader)
			idle.active = true
		}
		if err == errWouldBlock || err != nil && isTimeout(err) {
			b.drop()
			if !drain && idle.active {
				idle.set, idle.busy = false, true // busy: renew the deadline
				continue
			}
			idle.hold.parked(time.Now())
			if l.park() {
				return
			}
			err = net.ErrClosed // closed meanwhile
		}
		d, over := l.pumped(frame, n, err, send)
		b.drop()
		if over {
			l.pumpEnd(d)
			return
		}
	}
}

// park gives the target's connection to the poller, unless the link was
// closed (false).
func (l *bridgeLink) park() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	if err := l.pumpReg.arm(); err != nil {
		return false
	}
	l.pumpParked = true
	return true
}

// unpark runs on the poller's goroutine when the parked target has input
// (or hung up): the pump goes on there, unless close ended it.
func (l *bridgeLink) unpark(headroom, chunk int, send func(frame []byte) error) {
	l.mu.Lock()
	parked := l.pumpParked
	l.pumpParked = false
	l.mu.Unlock()
	if !parked {
		return // closed meanwhile: close called pumpEnd
	}
	l.pumpIdle.set = false
	l.pumpParking(headroom, chunk, send)
}

// pumped sends what one read of the target got (n bytes, the frame's
// payload) and reports whether the pump is over (with how the session
// ends): the send failed, or the read did.
func (l *bridgeLink) pumped(frame []byte, n int, err error, send func(frame []byte) error) (gateway.Disconnect, bool) {
	if n > 0 {
		if send(frame) != nil {
			return gateway.DisconnectGone(), true
		}
	}
	switch {
	case err == nil:
		return gateway.Disconnect{}, false
	case err == io.EOF:
		return bridgeClosed, true
	case errors.Is(err, net.ErrClosed):
		return gateway.DisconnectGone(), true // the session ended first
	}
	return brokenLink(err), true
}
