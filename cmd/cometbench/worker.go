package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A worker holds a share of the sessions: it opens them at its share of the
// ramp rate, reads them, and reports to the parent as JSON lines. It runs
// in the parent's process (small runs) or as a child process ("cometbench
// worker", for runs that need more open files than one process may have);
// either way it talks over a pair of streams:
//
//	parent → worker   the workerSpec, then commands (drain, stop)
//	worker → parent   events (ready, tick, step, fatal)
//
// Each session has one goroutine that reads its connection: parked in the
// netpoller while idle, with a stack and a --read-buffer sized buffer.

// workerSpec tells one worker which sessions to open: the sessions with
// global index First … First+Count-1. Session i connects to URLs[i%len],
// from SrcIPs[i%len], and subscribes to channel Prefix.(i%Channels).
type workerSpec struct {
	ID          int           `json:"id"`
	URLs        []string      `json:"urls"`
	Transport   string        `json:"transport"`
	First       int           `json:"first"`
	Count       int           `json:"count"`
	Channels    int           `json:"channels"`
	Prefix      string        `json:"prefix"`
	SrcIPs      []string      `json:"src_ips"`
	Ramp        float64       `json:"ramp"` // sessions per second, this worker's share
	ReadBuffer  int           `json:"read_buffer"`
	OpenTimeout time.Duration `json:"open_timeout"`
	// Poll reads subscribed sessions from one epoll loop instead of one
	// goroutine each (transports that support it).
	Poll bool `json:"poll"`
	// Deflate offers permessage-deflate (websocket).
	Deflate bool `json:"deflate,omitempty"`
}

// command is a parent → worker line after the spec.
type command struct {
	// Cmd is "drain" (a publishing step is over: wait for the deliveries,
	// then report a step event) or "stop" (close every session and exit).
	Cmd  string `json:"cmd"`
	Step int    `json:"step,omitempty"`
	// Published is how many messages were published so far in total,
	// round-robin over the channels (see lastSeq).
	Published uint64        `json:"published,omitempty"`
	Timeout   time.Duration `json:"timeout,omitempty"`
}

// event is a worker → parent line.
type event struct {
	// Type is "ready" (every session is subscribed or has failed), "tick"
	// (once a second), "step" (the answer to drain) or "fatal".
	Type   string         `json:"type"`
	Worker int            `json:"worker"`
	Opened int            `json:"opened,omitempty"`
	Failed int            `json:"failed,omitempty"`
	Errors map[string]int `json:"errors,omitempty"` // why sessions failed to open, by message
	// Delivered is the number of bench messages received so far (tick).
	Delivered uint64 `json:"delivered,omitempty"`
	// WindowMax is the largest latency since the previous tick, ns.
	WindowMax int64 `json:"window_max,omitempty"`
	// Subscribed and Failing count sessions so far while opening (tick).
	Subscribed int64 `json:"subscribed,omitempty"`
	Failing    int64 `json:"failing,omitempty"`
	// Closed counts subscribed sessions the server ended, by reason.
	Closed map[string]int `json:"closed,omitempty"`
	Step   int            `json:"step,omitempty"`
	Hist   *histSnapshot  `json:"hist,omitempty"`
	// ArrivalHist is the same deliveries' latency at their arrival (the
	// kernel's receive timestamp, poll.go), for those read by the event
	// loop.
	ArrivalHist *histSnapshot `json:"arrival_hist,omitempty"`
	// Counts are cumulative over the run (the parent takes differences).
	Counts *seqCounts `json:"counts,omitempty"`
	// Expected is the cumulative number of deliveries the subscribed
	// sessions should have had.
	Expected   uint64 `json:"expected,omitempty"`
	Incomplete int    `json:"incomplete,omitempty"`
	// LastRecv is when the step's last bench message arrived (Unix ns), so
	// the parent can rate deliveries over the time they really took.
	LastRecv int64  `json:"last_recv,omitempty"`
	Error    string `json:"error,omitempty"`
}

// lastSeq is the last sequence number published on channel c when
// published messages went round-robin over channels: message k (from 0)
// is channel k%channels's number k/channels+1.
func lastSeq(published uint64, channels, c int) uint64 {
	n := published / uint64(channels)
	if uint64(c) < published%uint64(channels) {
		n++
	}
	return n
}

type sessionState int

const (
	sessOpening sessionState = iota
	sessReady                // subscribed, counted
	sessFailed               // never subscribed
	sessEnded                // subscribed, then ended by the server
)

// benchSession is one session. The reader goroutine owns everything but
// the fields under mu, which the worker reads while draining.
type benchSession struct {
	idx     int
	chIdx   int
	channel string

	mu       sync.Mutex
	state    sessionState
	stream   packetStream
	tr       seqTracker
	lastDone uint64 // lastSeq already counted into expected
}

type worker struct {
	spec   workerSpec
	tr     clientTransport
	bases  []*url.URL
	dials  []dialFunc
	outMu  sync.Mutex
	out    *json.Encoder
	ctx    context.Context // canceled at stop: aborts opens in flight
	cancel context.CancelFunc

	hist      atomic.Pointer[histogram]
	arrHist   atomic.Pointer[histogram] // latency at arrival (poll.go)
	windowMax atomic.Int64
	lastRecv  atomic.Int64 // arrival of the latest bench message, Unix ns
	delivered atomic.Uint64
	stopping  atomic.Bool
	nReady    atomic.Int64 // sessions subscribed so far
	nFailed   atomic.Int64 // sessions that failed to open so far

	sessions []*benchSession
	readers  sync.WaitGroup
	poller   *poller // nil without spec.Poll

	mu       sync.Mutex
	closed   map[string]int // subscribed sessions ended by the server, by reason
	expected uint64
}

// runWorker is a worker's whole life: read the spec from in, open the
// sessions, answer commands until "stop" or the end of in, close
// everything. Events go to out.
func runWorker(ctx context.Context, in io.Reader, out io.Writer) error {
	w := &worker{out: json.NewEncoder(out), closed: map[string]int{}}
	cmds := make(chan command)
	readErr := make(chan error, 1)
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	if !sc.Scan() {
		err := sc.Err()
		if err == nil {
			err = errors.New("no worker spec on standard input")
		}
		return w.fatal(err)
	}
	if err := json.Unmarshal(sc.Bytes(), &w.spec); err != nil {
		return w.fatal(fmt.Errorf("worker spec: %w", err))
	}
	if err := w.init(); err != nil {
		return w.fatal(err)
	}
	w.ctx, w.cancel = context.WithCancel(ctx)
	defer w.cancel()

	// The command reader ends when in ends; the parent closes it after
	// "stop" (or when it dies), so waiting for it is bounded.
	var bg sync.WaitGroup
	bg.Add(1)
	go func() {
		defer bg.Done()
		defer close(cmds)
		for sc.Scan() {
			var c command
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				readErr <- fmt.Errorf("worker command %q: %w", sc.Text(), err)
				return
			}
			cmds <- c
		}
	}()
	tickStop := make(chan struct{})
	bg.Add(1)
	go func() {
		defer bg.Done()
		w.ticks(tickStop)
	}()
	if w.poller != nil {
		bg.Add(1)
		go func() {
			defer bg.Done()
			w.poller.run()
		}()
	}

	err := w.serve(cmds, readErr)
	w.stop()
	close(tickStop)
	for range cmds { // let the command reader finish
	}
	bg.Wait()
	if err != nil {
		return w.fatal(err)
	}
	return nil
}

func (w *worker) init() error {
	s := w.spec
	switch {
	case s.Count < 0 || s.First < 0:
		return errors.New("worker spec: negative session range")
	case s.Channels < 1:
		return errors.New("worker spec: channels must be >= 1")
	case len(s.URLs) == 0 || len(s.SrcIPs) == 0:
		return errors.New("worker spec: no URLs or source addresses")
	case s.Ramp <= 0 || s.ReadBuffer < 64 || s.OpenTimeout <= 0:
		return errors.New("worker spec: ramp, read buffer and open timeout must be positive")
	}
	tr, err := lookupTransport(s.Transport)
	if err != nil {
		return err
	}
	w.tr = tr
	for _, raw := range s.URLs {
		u, err := url.Parse(raw)
		if err != nil {
			return err
		}
		w.bases = append(w.bases, u)
	}
	for _, ip := range s.SrcIPs {
		a := net.ParseIP(ip)
		if a == nil {
			return fmt.Errorf("worker spec: bad source address %q", ip)
		}
		d := sourceDialer(a, s.OpenTimeout)
		w.dials = append(w.dials, func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		})
	}
	w.hist.Store(newHistogram())
	w.arrHist.Store(newHistogram())
	if s.Poll {
		p, err := newPoller(w)
		if err != nil {
			return err
		}
		w.poller = p
	}
	return nil
}

func (w *worker) emit(e event) {
	e.Worker = w.spec.ID
	w.outMu.Lock()
	defer w.outMu.Unlock()
	_ = w.out.Encode(e) // the parent is gone if this fails; stdin's end stops us
}

// fatalLater reports an error from a goroutine other than serve's; the
// parent ends the run when it sees it.
func (w *worker) fatalLater(err error) {
	w.emit(event{Type: "fatal", Error: err.Error()})
}

func (w *worker) fatal(err error) error {
	w.emit(event{Type: "fatal", Error: err.Error()})
	return err
}

// serve opens the sessions, then answers commands.
func (w *worker) serve(cmds <-chan command, readErr <-chan error) error {
	opened, failed, errs, err := w.open(cmds)
	if errors.Is(err, errStopped) {
		return nil
	}
	if err != nil {
		return err
	}
	w.emit(event{Type: "ready", Opened: opened, Failed: failed, Errors: errs})
	for {
		select {
		case c, ok := <-cmds:
			if !ok {
				select {
				case err := <-readErr:
					return err
				default:
					return nil
				}
			}
			switch c.Cmd {
			case "drain":
				w.emit(w.drain(c))
			case "stop":
				return nil
			default:
				return fmt.Errorf("unknown worker command %q", c.Cmd)
			}
		case <-w.ctx.Done():
			return nil
		}
	}
}

// maxOpening bounds the session set-ups in flight, so a slow gateway sees
// at most this many half-open sessions from one worker.
const maxOpening = 256

type openResult struct {
	ok  bool
	err string
}

// open starts the sessions at the ramp rate and waits until each is
// subscribed or has failed. A "stop" (or the end of the commands) while
// opening ends the worker.
func (w *worker) open(cmds <-chan command) (opened, failed int, errs map[string]int, err error) {
	n := w.spec.Count
	results := make(chan openResult, n)
	sem := make(chan struct{}, maxOpening)
	interval := time.Duration(float64(time.Second) / w.spec.Ramp)
	start := time.Now()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	w.sessions = make([]*benchSession, n)
	errs = map[string]int{}
	pending := 0
	collect := func(r openResult) {
		pending--
		<-sem
		if r.ok {
			opened++
			return
		}
		failed++
		if len(errs) < 20 || errs[r.err] > 0 {
			errs[r.err]++
		}
	}
	for i := 0; i < n; i++ {
		// Wait until session i is due and an opening slot is free.
		due := start.Add(time.Duration(i) * interval)
		for {
			// One reading of the clock decides both whether to wait and
			// for what: reading it twice could find the session not due,
			// then due, and wait for a result that never comes.
			d := time.Until(due)
			if d <= 0 && len(sem) < cap(sem) {
				break
			}
			var tc <-chan time.Time
			if d > 0 {
				timer.Reset(d)
				tc = timer.C
			}
			select {
			case <-tc:
			case r := <-results:
				collect(r)
			case c, ok := <-cmds:
				return 0, 0, nil, stoppedWhileOpening(c, ok)
			case <-w.ctx.Done():
				return 0, 0, nil, errStopped
			}
			timer.Stop()
		}
		g := w.spec.First + i
		s := &benchSession{idx: g, chIdx: g % w.spec.Channels, tr: newSeqTracker()}
		s.channel = w.spec.Prefix + "." + strconv.Itoa(s.chIdx)
		w.sessions[i] = s
		sem <- struct{}{}
		pending++
		w.readers.Add(1)
		go func() {
			defer w.readers.Done()
			w.runSession(s, results)
		}()
	}
	for pending > 0 {
		select {
		case r := <-results:
			collect(r)
		case c, ok := <-cmds:
			return 0, 0, nil, stoppedWhileOpening(c, ok)
		case <-w.ctx.Done():
			return 0, 0, nil, errStopped
		}
	}
	return opened, failed, errs, nil
}

// errStopped ends a worker that was told to stop before it was ready.
var errStopped = errors.New("stopped while opening sessions")

func stoppedWhileOpening(c command, ok bool) error {
	if !ok || c.Cmd == "stop" {
		return errStopped
	}
	return fmt.Errorf("command %q while opening sessions", c.Cmd)
}

// runSession opens one session, waits for its subscription, then reads
// deliveries until the connection ends. It sends exactly one openResult.
func (w *worker) runSession(s *benchSession, results chan<- openResult) {
	g := s.idx
	fail := func(msg string) {
		s.mu.Lock()
		s.state = sessFailed
		s.mu.Unlock()
		w.nFailed.Add(1)
		results <- openResult{err: msg}
	}
	octx, cancel := context.WithTimeout(w.ctx, w.spec.OpenTimeout)
	st, err := w.tr.Open(octx, openOptions{
		Dial:       w.dials[g%len(w.dials)],
		Base:       w.bases[g%len(w.bases)],
		Channel:    s.channel,
		ReadBuffer: w.spec.ReadBuffer,
		Deflate:    w.spec.Deflate,
	})
	cancel()
	if err != nil {
		fail(err.Error())
		return
	}
	s.mu.Lock()
	if w.stopping.Load() {
		s.mu.Unlock()
		_ = st.Close()
		fail("stopped")
		return
	}
	s.stream = st
	s.mu.Unlock()

	// The subscription must be confirmed within the open timeout too.
	var timedOut atomic.Bool
	guard := time.AfterFunc(w.spec.OpenTimeout, func() {
		timedOut.Store(true)
		_ = st.Close()
	})
	ready := false
	chName := []byte(s.channel)
	var closeReason string
	for {
		p, err := st.Next()
		if err != nil {
			guard.Stop()
			switch {
			case !ready && timedOut.Load():
				fail("no subscription confirmed within " + w.spec.OpenTimeout.String())
			case !ready:
				fail("before subscribing: " + err.Error())
			default:
				w.ended(s, closeReason, err)
			}
			_ = st.Close()
			return
		}
		pk := w.onPacket(s, chName, p, time.Now().UnixNano(), 0)
		if pk == nil {
			continue
		}
		switch pk.T {
		case "ok":
			if !ready {
				if !guard.Stop() {
					continue // the guard fired: Next fails and reports the timeout
				}
				ready = true
				s.mu.Lock()
				s.state = sessReady
				s.mu.Unlock()
				w.nReady.Add(1)
				results <- openResult{ok: true}
				if ps, ok := st.(pollable); ok && w.poller != nil {
					w.handover(s, ps, chName)
					return
				}
			}
		case "err":
			if !ready {
				guard.Stop()
				fail(fmt.Sprintf("subscribing to %s: %d %s", s.channel, pk.Code, pk.Error))
				_ = st.Close()
				return
			}
		case "close":
			closeReason = fmt.Sprintf("%d %s", pk.Code, pk.Reason)
		}
	}
}

// onPacket handles one packet of a session: a msg is checked and timed
// here (this runs once per delivery); any other packet is decoded and
// returned (nil for a msg or an undecodable packet).
func (w *worker) onPacket(s *benchSession, chName, p []byte, now, arrival int64) *ctlPacket {
	if bytes.Equal(packetType(p), typMsg) {
		m := scanMsg(p)
		ours := m.ours && bytes.Equal(m.ch, chName)
		s.mu.Lock()
		if ours {
			s.tr.Observe(m.seq)
		} else {
			s.tr.foreign++
		}
		s.mu.Unlock()
		if ours {
			lat := now - m.ts
			w.hist.Load().Record(lat)
			if arrival != 0 {
				w.arrHist.Load().Record(arrival - m.ts)
			}
			for {
				cur := w.windowMax.Load()
				if lat <= cur || w.windowMax.CompareAndSwap(cur, lat) {
					break
				}
			}
			w.delivered.Add(1)
			if now > w.lastRecv.Load() {
				w.lastRecv.Store(now) // a rare lost race only makes it a little early
			}
		}
		return nil
	}
	pk, err := decodeCtl(p)
	if err != nil {
		return nil
	}
	return &pk
}

// handover moves a subscribed session from its reader goroutine to the
// event loop; the goroutine ends after it.
func (w *worker) handover(s *benchSession, ps pollable, chName []byte) {
	conn, rest, parser := ps.Handover()
	fd, err := detachFD(conn)
	if err != nil {
		w.ended(s, "", err)
		return
	}
	if a, ok := parser.(answeringParser); ok {
		a.answerTo(fdWriter(fd))
	}
	pc := newPolledConn(w, fd, parser, s, chName)
	pc.now = time.Now().UnixNano()
	if err := parser.Feed(rest, pc.emit); err != nil {
		_ = syscall.Close(fd)
		w.ended(s, pc.closeReason, err)
		return
	}
	s.mu.Lock()
	s.stream = nil // the poller owns the connection now
	s.mu.Unlock()
	if err := w.poller.add(pc); err != nil {
		_ = syscall.Close(fd)
		if !errors.Is(err, errStopped) {
			w.ended(s, "", err)
		}
	}
}

// connEnded, connStopped and pollFailed are the worker's side of its
// poller (pollOwner).
func (w *worker) connEnded(pc *polledConn, err error) { w.ended(pc.s, pc.closeReason, err) }

func (w *worker) connStopped(pc *polledConn) {
	pc.s.mu.Lock()
	if pc.s.state == sessReady {
		pc.s.state = sessEnded
	}
	pc.s.mu.Unlock()
}

func (w *worker) pollFailed(err error) { w.fatalLater(err) }

// ended records a subscribed session that ended while the bench was not
// stopping it.
func (w *worker) ended(s *benchSession, closeReason string, err error) {
	s.mu.Lock()
	s.state = sessEnded
	s.mu.Unlock()
	if w.stopping.Load() {
		return
	}
	reason := closeReason
	if reason == "" {
		var ce *wsClosedError
		if errors.As(err, &ce) {
			reason = fmt.Sprintf("%d %s", ce.code, ce.reason)
		} else if errors.Is(err, io.EOF) {
			reason = "connection closed without a close packet"
		} else {
			reason = err.Error()
		}
	}
	w.mu.Lock()
	if len(w.closed) < 20 || w.closed[reason] > 0 {
		w.closed[reason]++
	}
	w.mu.Unlock()
}

func (w *worker) closedCopy() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.closed) == 0 {
		return nil
	}
	m := make(map[string]int, len(w.closed))
	for k, v := range w.closed {
		m[k] = v
	}
	return m
}

// drain waits until every subscribed session has the last message of its
// channel (or c.Timeout passes), counts what is still missing as lost,
// and reports the step.
func (w *worker) drain(c command) event {
	deadline := time.Now().Add(c.Timeout)
	incomplete := 0
	for {
		incomplete = 0
		for _, s := range w.sessions {
			last := lastSeq(c.Published, w.spec.Channels, s.chIdx)
			s.mu.Lock()
			if s.state == sessReady && !s.tr.Complete(last) {
				incomplete++
			}
			s.mu.Unlock()
		}
		if incomplete == 0 || !time.Now().Before(deadline) {
			break
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-w.ctx.Done():
			return event{Type: "step", Step: c.Step, Error: "stopped while draining"}
		}
	}
	var counts seqCounts
	for _, s := range w.sessions {
		last := lastSeq(c.Published, w.spec.Channels, s.chIdx)
		s.mu.Lock()
		if s.state == sessReady || s.state == sessEnded {
			s.tr.Settle(last)
			if last > s.lastDone {
				w.expected += last - s.lastDone
			}
			s.lastDone = last
		}
		counts.add(s.tr.counts())
		s.mu.Unlock()
	}
	snap := w.hist.Swap(newHistogram()).Snapshot()
	arr := w.arrHist.Swap(newHistogram()).Snapshot()
	return event{Type: "step", Step: c.Step, Hist: &snap, ArrivalHist: &arr, Counts: &counts, Expected: w.expected,
		Incomplete: incomplete, Closed: w.closedCopy(), LastRecv: w.lastRecv.Load()}
}

// ticks reports progress once a second until stop is closed.
func (w *worker) ticks(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			w.emit(event{Type: "tick", Delivered: w.delivered.Load(), WindowMax: w.windowMax.Swap(0),
				Subscribed: w.nReady.Load(), Failing: w.nFailed.Load()})
		case <-stop:
			return
		}
	}
}

// stop closes every session and waits for the readers.
func (w *worker) stop() {
	w.stopping.Store(true)
	w.cancel()
	if w.poller != nil {
		w.poller.stop() // it closes its connections itself
	}
	for _, s := range w.sessions {
		if s == nil {
			continue
		}
		s.mu.Lock()
		if s.stream != nil {
			_ = s.stream.Close()
		}
		s.mu.Unlock()
	}
	w.readers.Wait()
}
