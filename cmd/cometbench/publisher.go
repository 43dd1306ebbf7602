package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Publishing. Message k of the run (k from 0, counted across rate steps)
// goes to channel k%channels as that channel's sequence number
// k/channels+1, so receivers can tell lost, duplicated and reordered
// messages apart knowing only how many were published (see lastSeq).
// Messages are spread evenly over time: message k of a step is due at
// start + k/rate, and its timestamp is taken when it is actually sent.

// publisher sends one message; Send may be called from several goroutines,
// but never concurrently for one channel (so each channel's messages leave
// in order).
type publisher interface {
	// Send publishes payload on channel name; it returns once the message
	// is handed over (api: the gateway confirmed it; nats: buffered in the
	// client, confirmed by Flush).
	Send(ctx context.Context, channel string, payload []byte) error
	// Flush waits until everything sent is confirmed.
	Flush(ctx context.Context) error
	// Lanes is how many goroutines may send at once.
	Lanes() int
	Close()
}

// apiPublisher posts to the gateway's POST /api/publish.
type apiPublisher struct {
	client *http.Client
	url    string
	key    string
	lanes  int
}

func newAPIPublisher(base string, key string, src net.IP, lanes int) *apiPublisher {
	d := sourceDialer(src, 5*time.Second)
	return &apiPublisher{
		client: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				DialContext:         d.DialContext,
				MaxIdleConnsPerHost: lanes,
				MaxConnsPerHost:     lanes,
				DisableCompression:  true,
			},
		},
		url:   base + "/api/publish",
		key:   key,
		lanes: lanes,
	}
}

func (p *apiPublisher) Lanes() int { return p.lanes }

func (p *apiPublisher) Send(ctx context.Context, channel string, payload []byte) error {
	body := make([]byte, 0, len(payload)+len(channel)+24)
	body = append(body, `{"channel":`...)
	body = strconv.AppendQuote(body, channel)
	body = append(body, `,"data":`...)
	body = append(body, payload...)
	body = append(body, '}')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if p.key != "" {
		req.Header.Set("Authorization", "Bearer "+p.key)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("POST /api/publish: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

func (p *apiPublisher) Flush(context.Context) error { return nil }

func (p *apiPublisher) Close() { p.client.CloseIdleConnections() }

// natsPublisher publishes straight into the broker: the gateway receives
// the message exactly as from any other backend publisher.
type natsPublisher struct {
	nc     *nats.Conn
	prefix string
}

func newNATSPublisher(url, subjectPrefix string) (*natsPublisher, error) {
	nc, err := nats.Connect(url, nats.Name("cometbench"), nats.Timeout(5*time.Second),
		nats.MaxReconnects(0))
	if err != nil {
		return nil, fmt.Errorf("--nats-url %s: %w (is the gateway's embedded listener on? COMETGATE_BROKER_EMBEDDED_LISTEN=127.0.0.1:4223)", url, err)
	}
	return &natsPublisher{nc: nc, prefix: subjectPrefix}, nil
}

func (p *natsPublisher) Lanes() int { return 1 }

func (p *natsPublisher) Send(_ context.Context, channel string, payload []byte) error {
	return p.nc.Publish(p.prefix+channel, payload)
}

func (p *natsPublisher) Flush(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.nc.FlushWithContext(ctx)
}

func (p *natsPublisher) Close() { p.nc.Close() }

// publishStats describes one publishing step.
type publishStats struct {
	Published uint64 // messages attempted (each consumed a sequence number)
	Errors    uint64
	FirstErr  string
	MaxLag    time.Duration // worst delay of a send behind its schedule
	Elapsed   time.Duration // from the first due time to the last send
}

type pubJob struct {
	k     uint64
	sched time.Time
}

// publishStep publishes round(rate·d) messages, numbered from k0, paced
// evenly, and waits until all are sent and flushed.
func publishStep(ctx context.Context, p publisher, prefix string, channels int, payloadSize int,
	k0 uint64, rate float64, d time.Duration) publishStats {
	total := uint64(rate*d.Seconds() + 0.5)
	lanes := min(p.Lanes(), channels)
	var (
		errs     atomic.Uint64
		maxLag   atomic.Int64
		lastSend atomic.Int64
		errOnce  sync.Once
		firstErr string
		wg       sync.WaitGroup
	)
	queues := make([]chan pubJob, lanes)
	for i := range queues {
		queues[i] = make(chan pubJob, 1024)
		wg.Add(1)
		go func(q <-chan pubJob) {
			defer wg.Done()
			pb := newPayloadBuilder(payloadSize)
			var buf []byte
			for j := range q {
				ch := int(j.k % uint64(channels))
				seq := j.k/uint64(channels) + 1
				now := time.Now()
				buf = pb.Append(buf[:0], seq, now.UnixNano())
				lag := int64(now.Sub(j.sched))
				for {
					m := maxLag.Load()
					if lag <= m || maxLag.CompareAndSwap(m, lag) {
						break
					}
				}
				if err := p.Send(ctx, prefix+"."+strconv.Itoa(ch), buf); err != nil {
					errs.Add(1)
					errOnce.Do(func() { firstErr = err.Error() })
				}
				lastSend.Store(time.Now().UnixNano())
			}
		}(queues[i])
	}

	start := time.Now()
	interval := float64(time.Second) / rate
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var sent uint64
loop:
	for sent < total {
		due := start.Add(time.Duration(float64(sent) * interval))
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				break loop
			}
		}
		// Everything due by now goes out in one pass.
		now := time.Now()
		for sent < total {
			sched := start.Add(time.Duration(float64(sent) * interval))
			if sched.After(now) {
				break
			}
			k := k0 + sent
			select {
			case queues[int(k%uint64(channels))%lanes] <- pubJob{k: k, sched: sched}:
			case <-ctx.Done():
				break loop
			}
			sent++
		}
	}
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	if err := p.Flush(ctx); err != nil {
		errOnce.Do(func() { firstErr = "flush: " + err.Error() })
		errs.Add(1)
	}
	// The lanes have ended (wg.Wait), so firstErr is settled.
	st := publishStats{Published: sent, Errors: errs.Load(), MaxLag: time.Duration(maxLag.Load()), FirstErr: firstErr}
	if ls := lastSend.Load(); ls > 0 {
		st.Elapsed = time.Unix(0, ls).Sub(start)
	}
	if st.Elapsed < d && sent == total {
		st.Elapsed = d
	}
	return st
}
