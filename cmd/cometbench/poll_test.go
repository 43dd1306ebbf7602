package main

import (
	"encoding/binary"
	"syscall"
	"testing"
	"unsafe"
)

// cmsg builds one control message as the kernel lays it out (header,
// data, padding to the alignment).
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, syscall.CmsgSpace(len(data)))
	h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(syscall.CmsgLen(len(data)))
	copy(b[syscall.CmsgLen(0):], data)
	return b
}

func timespecBytes(sec, nsec int64) []byte {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint64(b, uint64(sec))
	binary.NativeEndian.PutUint64(b[8:], uint64(nsec))
	return b
}

func TestReceiveTimestamp(t *testing.T) {
	ts := timespecBytes(1_796_493_708, 216_187_742)
	want := int64(1_796_493_708_216_187_742)
	for _, tc := range []struct {
		name string
		oob  []byte
		want int64
	}{
		{"none", nil, 0},
		{"alone", cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, ts), want},
		{"after another message", append(cmsg(syscall.SOL_SOCKET, syscall.SCM_RIGHTS, []byte{1, 2, 3, 4}), cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, ts)...), want},
		{"another level", cmsg(syscall.IPPROTO_TCP, syscall.SCM_TIMESTAMPNS, ts), 0},
		{"too short", cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, ts[:8]), 0},
		{"truncated", cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, ts)[:20], 0},
	} {
		if got := receiveTimestamp(tc.oob); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// FuzzReceiveTimestamp: whatever the control bytes, the parser neither
// panics nor reads past them.
func FuzzReceiveTimestamp(f *testing.F) {
	f.Add(cmsg(syscall.SOL_SOCKET, syscall.SCM_TIMESTAMPNS, timespecBytes(1, 2)))
	f.Add(append(cmsg(syscall.SOL_SOCKET, syscall.SCM_RIGHTS, []byte{1}), 0, 0, 0))
	f.Add([]byte{17, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 35, 0, 0, 0, 9})
	f.Fuzz(func(t *testing.T, oob []byte) {
		_ = receiveTimestamp(oob)
	})
}
