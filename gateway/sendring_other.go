//go:build !linux

package gateway

import "errors"

// sendRing exists on Linux only (io_uring); elsewhere a worker makes its
// writes one at a time.
type sendRing struct{}

const sendFlags = 0

func newSendRing(uint32) (*sendRing, error) { return nil, errors.New("gateway: no io_uring") }

func (r *sendRing) capacity() int         { return 0 }
func (r *sendRing) close()                {}
func (r *sendRing) send(sends []ringSend) {}
