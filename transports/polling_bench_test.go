package transports

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkLongPollCycle measures one long-poll cycle: a message is
// published, the waiting client's next poll (acknowledging the previous
// one) carries it back. It reports the response head's size, the
// per-request overhead a long-poll pays on the wire (the budget is 200
// bytes), next to the time per cycle.
//
//	go test -run='^$' -bench=LongPoll -benchmem ./transports
func BenchmarkLongPollCycle(b *testing.B) {
	n := startNode(b, nil, nil)
	conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)

	get := func(path string) (headBytes int, body []byte) {
		if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
			b.Fatal(err)
		}
		length := -1
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			headBytes += len(line)
			if line == "\r\n" {
				break
			}
			if v, ok := strings.CutPrefix(line, "Content-Length: "); ok {
				length, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if length < 0 {
			b.Fatalf("GET %s: no Content-Length", path)
		}
		body = make([]byte, length)
		if _, err := io.ReadFull(br, body); err != nil {
			b.Fatal(err)
		}
		return headBytes, body
	}
	lastSeq := func(body []byte) (sid string, seq uint64) {
		var pkts []struct {
			Seq uint64 `json:"seq"`
			SID string `json:"sid"`
		}
		if err := json.Unmarshal(body, &pkts); err != nil || len(pkts) == 0 {
			b.Fatalf("poll body %s: %v", body, err)
		}
		return pkts[0].SID, pkts[len(pkts)-1].Seq
	}

	_, body := get("/poll?ch=demo.bench")
	sid, ack := lastSeq(body)
	head := 0
	b.ResetTimer()
	for i := range b.N {
		if err := n.gw.Publish(context.Background(), "demo.bench", []byte(strconv.Itoa(i)), ""); err != nil {
			b.Fatal(err)
		}
		h, body := get(fmt.Sprintf("/poll/%s?ack=%d", sid, ack))
		_, ack = lastSeq(body)
		head = h
	}
	b.StopTimer()
	b.ReportMetric(float64(head), "header-bytes/response")
}
