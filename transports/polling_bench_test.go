package transports

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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
	cpu := processCPU()
	for i := range b.N {
		if err := n.gw.Publish(context.Background(), "demo.bench", []byte(strconv.Itoa(i)), ""); err != nil {
			b.Fatal(err)
		}
		h, body := get(fmt.Sprintf("/poll/%s?ack=%d", sid, ack))
		_, ack = lastSeq(body)
		head = h
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu).Microseconds())/float64(b.N), "cpu-µs/cycle")
	b.ReportMetric(float64(head), "header-bytes/response")
}

// BenchmarkParkedPollCycle measures one long-poll cycle where the poll
// waits: the poll is sent and parked (polling.go, "Parked requests"),
// then a message is published and answers it, and the connection goes
// back to net/http for the next poll.
//
//	go test -run='^$' -bench=ParkedPoll -benchmem ./transports
func BenchmarkParkedPollCycle(b *testing.B) {
	n := startNode(b, nil, func(o *Options) { o.ParkAfter = -1 })
	parked := make(chan struct{}, 1)
	onPark := func() { parked <- struct{}{} }
	n.srv.onPark.Store(&onPark)
	conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	send := func(path string) {
		if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
			b.Fatal(err)
		}
	}
	receive := func() (sid string, seq uint64) {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		var pkts []struct {
			Seq uint64 `json:"seq"`
			SID string `json:"sid"`
		}
		if err != nil || json.Unmarshal(body, &pkts) != nil || len(pkts) == 0 {
			b.Fatalf("poll body %s: %v", body, err)
		}
		return pkts[0].SID, pkts[len(pkts)-1].Seq
	}
	send("/poll?ch=demo.bench")
	sid, ack := receive()
	b.ResetTimer()
	// The process's CPU time per cycle (client included) is what a parked
	// poll costs next to a held one (BenchmarkLongPollCycle reports it
	// too).
	cpu := processCPU()
	for i := range b.N {
		send(fmt.Sprintf("/poll/%s?ack=%d", sid, ack))
		<-parked
		if err := n.gw.Publish(context.Background(), "demo.bench", []byte(strconv.Itoa(i)), ""); err != nil {
			b.Fatal(err)
		}
		_, ack = receive()
	}
	b.ReportMetric(float64((processCPU()-cpu).Microseconds())/float64(b.N), "cpu-µs/cycle")
}
