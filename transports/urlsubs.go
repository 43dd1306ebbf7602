package transports

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/cometgate/cometgate/gateway"
)

// urlStarts reads where each subscription named in an open URL (ch=,
// repeatable) starts, from the parameters that follow the channel's name:
//
//	cursor.CH=41   resume after the message with cursor 41
//	latest.CH=1    the latest stored message of each channel, then live
//	last.CH=N      the last N stored messages (1 to brokers.MaxRecent), then live
//
// A latest. or last. parameter that names no ch= channel, or has another
// value, is an error the client can fix (the answer is 400). A cursor
// wins over latest and last (the gateway's rule), so a plain EventSource
// that reconnects to the same URL with Last-Event-ID resumes rather than
// starting over from the current state.
func urlStarts(q url.Values, channels []string) ([]gateway.Start, error) {
	starts := make([]gateway.Start, len(channels))
	index := make(map[string]int, len(channels))
	for i, ch := range channels {
		index[ch] = i
		starts[i].Cursor = q.Get("cursor." + ch)
	}
	for key, vals := range q {
		kind, ch, ok := strings.Cut(key, ".")
		if !ok || (kind != "latest" && kind != "last") {
			continue
		}
		i, named := index[ch]
		if !named {
			return nil, fmt.Errorf("%q names no channel of the URL (ch=%s is missing)", key, ch)
		}
		if len(vals) != 1 {
			return nil, fmt.Errorf("%q given %d times", key, len(vals))
		}
		v := vals[0]
		switch kind {
		case "latest":
			if v != "1" && v != "true" {
				return nil, fmt.Errorf("%s=%q: write %s=1", key, v, key)
			}
			starts[i].Latest = true
		case "last":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("%s=%q: want a count of messages, 1 or more", key, v)
			}
			starts[i].Last = n
		}
	}
	return starts, nil
}
