//go:build unix

package transports

import (
	"bytes"
	"compress/flate"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cometgate/cometgate/brokers"
	"github.com/cometgate/cometgate/gateway"
)

// BenchmarkDeflateBroadcast broadcasts messages to 1,000 WebSocket
// subscribers, with and without permessage-deflate, through the native
// codec's framing (what wsSession.WritePackets builds before its write):
// one op is one message, encoded once (gateway.EncodeMessage, as the hub
// does) and framed for every subscriber by GOMAXPROCS goroutines standing
// in for the sessions' writers, so the first compression of a body races
// with its other subscribers as in a real fan-out. The write itself is
// left out: it costs the same for both, bytes aside (see
// BenchmarkLoopbackWrite). It reports the compressions per message
// (deflateCount: 1 with deflate, 0 without), the bytes on the wire per
// delivery, and the CPU time per delivery.
//
//	go test -run='^$' -bench=DeflateBroadcast -benchtime=200x ./transports
func BenchmarkDeflateBroadcast(b *testing.B) {
	const subscribers = 1000
	for _, size := range []int{512, 2048, 16384} {
		data := []byte(jsonPayload(size))
		for _, mode := range []string{"plain", "deflate"} {
			b.Run(fmt.Sprintf("%dB/%s", size, mode), func(b *testing.B) {
				var z *wsDeflate
				if mode == "deflate" {
					_, z = negotiateDeflate([]string{"permessage-deflate"}, Compression{})
				}
				workers := runtime.GOMAXPROCS(0)
				seqs := make([]uint64, subscribers)
				wire := make([]int64, workers)
				bufs := make([][]byte, workers)
				before := deflateCount.Load()
				start := cpuTime()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					body := gateway.EncodeMessage(brokers.Message{Channel: "demo.votes", Data: data, Seq: uint64(i + 1)}, "demo.votes", time.Now())
					var wg sync.WaitGroup
					for w := range workers {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for s := w; s < subscribers; s += workers {
								seqs[s]++
								bufs[w] = nativeCodec{}.appendPackets(bufs[w][:0], []gateway.Packet{gateway.NewPacket(seqs[s], body)}, z)
								wire[w] += int64(len(bufs[w]))
							}
						}()
					}
					wg.Wait()
				}
				b.StopTimer()
				cpu := cpuTime() - start
				deliveries := float64(b.N) * subscribers
				var bytesOut int64
				for _, n := range wire {
					bytesOut += n
				}
				compressions := float64(deflateCount.Load()-before) / float64(b.N)
				if want := map[string]float64{"plain": 0, "deflate": 1}[mode]; compressions != want {
					b.Fatalf("%v compressions per message, want %v", compressions, want)
				}
				b.ReportMetric(compressions, "compressions/msg")
				b.ReportMetric(float64(bytesOut)/deliveries, "wire-B/delivery")
				b.ReportMetric(float64(cpu.Nanoseconds())/deliveries, "cpu-ns/delivery")
			})
		}
	}
}

// BenchmarkDeflateLevels compares compress/flate's levels on a JSON body
// compressed on its own, as every body is (no context takeover): time
// per body and the compressed size in percent of the body.
//
//	go test -run='^$' -bench=DeflateLevels ./transports
func BenchmarkDeflateLevels(b *testing.B) {
	for _, size := range []int{512, 2048, 16384} {
		data := []byte(jsonPayload(size))
		for _, level := range []int{flate.HuffmanOnly, flate.BestSpeed, 4, flate.DefaultCompression, flate.BestCompression} {
			b.Run(fmt.Sprintf("%dB/level%d", size, level), func(b *testing.B) {
				var out bytes.Buffer
				w, _ := flate.NewWriter(&out, level)
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					out.Reset()
					w.Reset(&out)
					_, _ = w.Write(data)
					_ = w.Flush()
				}
				b.ReportMetric(100*float64(out.Len()-4)/float64(len(data)), "size-%")
			})
		}
	}
}

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
