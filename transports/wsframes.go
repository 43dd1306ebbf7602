package transports

import (
	"errors"
	"io"
	"strconv"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/cometgate/cometgate/gateway"
)

// wsFrames reads a client's WebSocket frames and assembles its messages,
// enforcing what RFC 6455 asks of a server: masking, no extension but
// permessage-deflate when negotiated (RSV1 on a data message's first
// frame; the message is inflated within the limit), no reserved opcodes, final control frames of at most 125 bytes, well-formed
// fragmentation (control frames may come between fragments), a size limit
// per message, and UTF-8 in text messages. Both WebSocket readers (native
// and SockJS) use it; what they do with messages, pings and closes is
// their own.
type wsFrames struct {
	conn io.Reader
	// buffered, when set, is conn's buffer: a frame it holds whole is
	// parsed in place (the bridge's reader, bridge_reader.go).
	buffered framePeeker
	// limit is the largest message accepted; tooLarge is the close code
	// for one over it.
	limit    int32 // 32 bits: every WebSocket holds a wsFrames (see wsConn)
	tooLarge int32
	// utf8Binary checks binary messages too (a SockJS message is text
	// whatever frame carries it).
	utf8Binary bool
	// inflate says permessage-deflate was negotiated (wsdeflate.go).
	inflate bool

	hdr     [ws.MaxHeaderSize - 2]byte
	payload []byte    // the current frame's payload
	frag    []byte    // a fragmented data message being assembled
	fragOp  ws.OpCode // its opcode, while inFrag
	inFrag  bool
	fragZ   bool   // the fragmented message is compressed
	plain   []byte // the last message inflated
}

// framePeeker is a reader whose buffer a frame can be read from in place.
type framePeeker interface {
	// frameStart says a frame's header is read next.
	frameStart()
	// peek returns the next n bytes, consumed, when the buffer holds
	// them (nil otherwise); they are valid until the next read.
	peek(n int) []byte
}

// wsEvent is what next found: a complete data message (OpText or
// OpBinary), a ping, a pong or a close (with the frame's payload). Data is
// valid until the next call.
type wsEvent struct {
	op   ws.OpCode
	data []byte
}

// wsViolation is a protocol violation: the close code to fail the
// connection with and why.
type wsViolation struct {
	code   int
	reason string
}

// next returns the next event, or the violation that must end the
// connection, or the read error that ended it.
func (r *wsFrames) next() (wsEvent, *wsViolation, error) {
	for {
		// Keep no large buffer on an idle connection. The bridge's
		// reader, busy by nature, keeps a bulk frame's (its connection
		// drops it when it goes idle): one allocation per frame cost
		// a bulk transfer more than the copy into it.
		if cap(r.payload) > 4096 && (r.buffered == nil || cap(r.payload) > 64<<10) {
			r.payload = nil
		}
		if !r.inFrag && cap(r.frag) > 4096 {
			r.frag = nil
		}
		if cap(r.plain) > 4096 {
			r.plain = nil
		}
		if r.buffered != nil {
			r.buffered.frameStart()
		}
		h, err := ws.ReadHeaderBuffer(r.conn, r.hdr[:])
		if err != nil {
			return wsEvent{}, nil, err
		}
		switch {
		case h.Rsv != 0 && !r.inflate:
			return wsEvent{}, &wsViolation{gateway.CodeProtocolError, "reserved bits set without a negotiated extension"}, nil
		case h.Rsv2() || h.Rsv3():
			return wsEvent{}, &wsViolation{gateway.CodeProtocolError, "RSV2 and RSV3 must be clear (only permessage-deflate was negotiated)"}, nil
		case h.Rsv1() && h.OpCode != ws.OpText && h.OpCode != ws.OpBinary:
			return wsEvent{}, &wsViolation{gateway.CodeProtocolError, "RSV1 is allowed on the first frame of a data message only"}, nil
		case !h.Masked:
			return wsEvent{}, &wsViolation{gateway.CodeProtocolError, "client frames must be masked"}, nil
		case h.OpCode.IsReserved():
			return wsEvent{}, &wsViolation{gateway.CodeProtocolError, "reserved opcode"}, nil
		case h.OpCode.IsControl() && (!h.Fin || h.Length > 125):
			return wsEvent{}, &wsViolation{gateway.CodeProtocolError, "control frames must be final and at most 125 bytes"}, nil
		case h.Length > int64(r.limit) ||
			// Only continuations add to a fragmented message; a ping
			// between its fragments is not part of it.
			h.OpCode == ws.OpContinuation && int64(len(r.frag))+h.Length > int64(r.limit):
			return wsEvent{}, &wsViolation{int(r.tooLarge), "message too large: the limit is " + strconv.Itoa(int(r.limit)) + " bytes"}, nil
		}
		n := int(h.Length)
		var payload []byte
		if r.buffered != nil && n > 0 {
			payload = r.buffered.peek(n) // in the reader's buffer: no copy
		}
		if payload == nil {
			if cap(r.payload) < n {
				r.payload = make([]byte, n)
			}
			r.payload = r.payload[:n]
			if _, err := io.ReadFull(r.conn, r.payload); err != nil {
				return wsEvent{}, nil, err
			}
			payload = r.payload
		}
		ws.Cipher(payload, h.Mask, 0)

		var ev wsEvent
		compressed := h.Rsv1()
		switch h.OpCode {
		case ws.OpPing, ws.OpPong, ws.OpClose:
			return wsEvent{op: h.OpCode, data: payload}, nil, nil
		case ws.OpContinuation:
			if !r.inFrag {
				return wsEvent{}, &wsViolation{gateway.CodeProtocolError, "continuation frame without a message to continue"}, nil
			}
			r.frag = append(r.frag, payload...)
			if !h.Fin {
				continue
			}
			ev = wsEvent{op: r.fragOp, data: r.frag}
			r.inFrag, compressed = false, r.fragZ
		default: // text or binary
			if r.inFrag {
				return wsEvent{}, &wsViolation{gateway.CodeProtocolError, "new data frame inside a fragmented message"}, nil
			}
			if !h.Fin {
				r.inFrag, r.fragOp, r.fragZ = true, h.OpCode, compressed
				r.frag = append(r.frag[:0], payload...)
				continue
			}
			ev = wsEvent{op: h.OpCode, data: payload}
		}
		if compressed {
			var err error
			r.plain, err = inflate(r.plain, ev.data, int(r.limit))
			switch {
			case errors.Is(err, errInflateTooLarge):
				return wsEvent{}, &wsViolation{int(r.tooLarge), "message too large: it inflates beyond the limit of " + strconv.Itoa(int(r.limit)) + " bytes"}, nil
			case err != nil:
				return wsEvent{}, &wsViolation{gateway.CodeInvalidPayload, "compressed message is not valid deflate data"}, nil
			}
			ev.data = r.plain
		}
		if (ev.op == ws.OpText || r.utf8Binary) && !utf8.Valid(ev.data) {
			return wsEvent{}, &wsViolation{gateway.CodeInvalidPayload, "text message is not valid UTF-8"}, nil
		}
		if !r.inFrag {
			r.frag = r.frag[:0]
		}
		return ev, nil, nil
	}
}
