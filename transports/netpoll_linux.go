//go:build linux

package transports

import (
	"runtime"
	"sync"
	"syscall"
)

// poller watches idle connections for input with one epoll instance and
// one goroutine, so that an idle WebSocket or SSE connection does not park
// a reader goroutine of its own. A parked goroutine costs at least a 2 KiB
// stack plus its descriptor, more than half of the memory budget of an
// idle session (PERFORMANCE.md: 4 KiB); a registration here costs one
// table entry.
//
// Each registration is one-shot (EPOLLONESHOT): when its connection has
// input, the poller starts a goroutine that reads what arrived and then
// re-arms it. So at most one goroutine reads a connection at a time, and
// the read itself goes through Go's own poller as usual (a frame that
// arrives in pieces is waited for there, within a read deadline). A busy
// connection (the TCP bridge's two sides) keeps the goroutine while it
// is in use and re-arms only once it has been silent for a while
// (bridge_reader.go, bridgeLink.pumpAsync): a goroutine started and an
// epoll_ctl per message cost more than the message.
//
// Events name a slot of the table and its generation, never a file
// descriptor: a connection closed and a new one given the same descriptor
// number cannot receive the old one's event.
type poller struct {
	epfd int
	wake [2]int // a pipe: writing to it stops the loop

	mu    sync.Mutex
	slots []pollSlot
	free  []int32
	gens  sync.WaitGroup // the goroutines started for events
	done  chan struct{}  // closed when the loop returned
	stop  sync.Once
}

type pollSlot struct {
	gen   int32
	ready func() // nil: the slot is free
}

// wakeSlot marks the pipe's event.
const wakeSlot = -1

func newPoller() (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	p := &poller{epfd: epfd, done: make(chan struct{})}
	if err := syscall.Pipe2(p.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		_ = syscall.Close(epfd)
		return nil, err
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: wakeSlot}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev); err != nil {
		p.closeFDs()
		return nil, err
	}
	go p.loop()
	return p, nil
}

func (p *poller) closeFDs() {
	_ = syscall.Close(p.wake[0])
	_ = syscall.Close(p.wake[1])
	_ = syscall.Close(p.epfd)
}

func (p *poller) loop() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			return
		}
		for i := range events[:n] {
			ev := &events[i]
			if ev.Fd == wakeSlot {
				return
			}
			p.mu.Lock()
			if int(ev.Fd) < len(p.slots) {
				if s := p.slots[ev.Fd]; s.ready != nil && s.gen == ev.Pad {
					p.gens.Add(1)
					go func() {
						defer p.gens.Done()
						s.ready()
					}()
				}
			}
			p.mu.Unlock()
		}
		// Let the readers just started run before more are started: a
		// burst of input on many connections (a thousand bridged
		// connections answered at once) would otherwise have a
		// goroutine and a stack for each before the first ran, memory
		// the runtime keeps long after the burst.
		runtime.Gosched()
	}
}

// run runs fn on a goroutine that close waits for.
func (p *poller) run(fn func()) {
	p.gens.Add(1)
	go func() {
		defer p.gens.Done()
		fn()
	}()
}

// close stops the loop and waits for it and for the goroutines it
// started. Call it once every connection is deregistered.
func (p *poller) close() {
	p.stop.Do(func() {
		_, _ = syscall.Write(p.wake[1], []byte{1})
		<-p.done
		p.gens.Wait()
		p.closeFDs()
	})
}

// pollReg is one connection's registration.
type pollReg struct {
	p     *poller
	rc    syscall.RawConn
	slot  int32
	gen   int32
	added bool // in the epoll set; guarded by p.mu
}

// register reserves a slot for a connection; nothing is watched until arm.
// ready runs on a goroutine of its own for each event.
func (p *poller) register(rc syscall.RawConn, ready func()) *pollReg {
	p.mu.Lock()
	var slot int32
	if n := len(p.free); n > 0 {
		slot = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		slot = int32(len(p.slots))
		p.slots = append(p.slots, pollSlot{})
	}
	p.slots[slot].gen++
	p.slots[slot].ready = ready
	r := &pollReg{p: p, rc: rc, slot: slot, gen: p.slots[slot].gen}
	p.mu.Unlock()
	return r
}

// run runs fn now, on a goroutine the poller's close waits for: the
// first read, for input that arrived with the request.
func (r *pollReg) run(fn func()) { r.p.run(fn) }

// arm asks for one event on the next input (or hang-up). Only the
// connection's reader calls it, after reading what there was. It holds
// p.mu, which the loop takes to start the next reader: so what this
// reader did happens before what the next one does (for the race
// detector too, which does not see through the system calls).
func (r *pollReg) arm() error {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: r.slot, Pad: r.gen}
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	if r.added {
		return r.ctl(syscall.EPOLL_CTL_MOD, &ev)
	}
	r.added = true
	return r.ctl(syscall.EPOLL_CTL_ADD, &ev)
}

func (r *pollReg) ctl(op int, ev *syscall.EpollEvent) error {
	var err error
	cerr := r.rc.Control(func(fd uintptr) {
		err = syscall.EpollCtl(r.p.epfd, op, int(fd), ev)
	})
	if cerr != nil {
		return cerr
	}
	return err
}

// remove deregisters the connection; call it before closing it (closing
// removes it from epoll too, but an event already queued must find its
// slot gone). Safe to call more than once.
func (r *pollReg) remove() {
	_ = r.ctl(syscall.EPOLL_CTL_DEL, nil)
	r.release()
}

func (r *pollReg) release() {
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := &p.slots[r.slot]; s.gen == r.gen && s.ready != nil {
		s.ready = nil
		p.free = append(p.free, r.slot)
	}
}
