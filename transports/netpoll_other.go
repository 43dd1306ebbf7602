//go:build !linux

package transports

import (
	"errors"
	"syscall"
)

// Without epoll every connection keeps its reader goroutine: newPoller
// fails and the transports fall back to it.
type poller struct{}

type pollReg struct{}

func newPoller() (*poller, error) {
	return nil, errors.New("transports: no idle-connection poller on this platform")
}

func (p *poller) close()                                    {}
func (p *poller) register(syscall.RawConn, func()) *pollReg { panic("transports: no poller") }
func (p *poller) run(func())                                { panic("transports: no poller") }
func (r *pollReg) run(func())                               { panic("transports: no poller") }
func (r *pollReg) arm() error                               { return errors.New("transports: no poller") }
func (r *pollReg) remove()                                  {}
