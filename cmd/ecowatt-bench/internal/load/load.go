// Package load is ecowatt-bench's MQTT load generator: N publishers and M
// subscribers on paho against any broker on loopback. Every run is bounded
// both in count (messages per publisher) and in time (the send phase, then a
// bounded drain). Each payload carries a run ID, the publisher's index, a
// sequence number and the send time (see HeaderSize), so the subscribers
// measure loss, duplicates and latency without any coordination.
package load

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/sync/errgroup"
)

// Bounds every run respects whatever it is asked.
const (
	MaxCount    = 10_000_000       // messages per publisher
	MaxDuration = 30 * time.Minute // send phase
	MaxClients  = 20_000           // publishers plus subscribers
	MaxSize     = 256 << 10        // payload bytes
	maxDrain    = 2 * time.Minute  // the drain phase, however slow the broker
	connectWait = 15 * time.Second // one CONNECT or SUBSCRIBE
)

// Account is how one client logs in.
type Account struct {
	ClientID string
	Username string        // empty for none
	Password func() string // called at connect (tokens expire); nil for none
}

// Publisher publishes Config.Count messages on Topic.
type Publisher struct {
	Account
	Topic string
}

// Subscriber subscribes to Filter and expects every message of the
// publishers listed in From (indexes into Config.Publishers).
type Subscriber struct {
	Account
	Filter string
	From   []int
}

// Config is one load run.
type Config struct {
	URL         string // tcp://127.0.0.1:1883; the host must be loopback
	Publishers  []Publisher
	Subscribers []Subscriber

	QoS      byte          // 0 or 1, for publishes and subscriptions
	Size     int           // payload bytes, >= HeaderSize
	Rate     float64       // messages/s per publisher; 0 = as fast as Inflight allows
	Count    int           // messages per publisher, 1..MaxCount
	Duration time.Duration // bound on the send phase, 1ns..MaxDuration
	Inflight int           // unfinished publishes per publisher; default 64
	Drain    time.Duration // stop waiting after this long with nothing new; default 2s

	ConnectParallel int                 // concurrent CONNECTs; default 16
	Progress        func(Progress)      // may be nil; called about every ProgressEvery
	ProgressEvery   time.Duration       // default 1s
	Now             func() time.Time    // default time.Now
	RunID           uint64              // tags payloads; default from Now
	OnConnLost      func(string, error) // may be nil; a client lost its connection
}

// Progress is a snapshot while a run goes.
type Progress struct {
	Phase    string // "send" or "drain"
	Elapsed  time.Duration
	Sent     int64 // publishes issued
	Received int64 // distinct messages received, all subscribers
}

// Result is what a run measured. Rates are per second of wall time from
// the first publish: SentRate to the last publish completing (PUBACK at
// QoS 1), RecvRate to the last message received.
type Result struct {
	Publishers  int     `json:"publishers"`
	Subscribers int     `json:"subscribers"`
	QoS         byte    `json:"qos"`
	Size        int     `json:"size"`
	Rate        float64 `json:"rate_per_publisher"` // 0: unpaced
	Count       int     `json:"count_per_publisher"`

	Sent       int64   `json:"sent"`         // publishes issued
	PubErrors  int64   `json:"pub_errors"`   // publishes that failed or never completed
	Expected   int64   `json:"expected"`     // deliveries owed to the subscribers
	Received   int64   `json:"received"`     // distinct deliveries
	Lost       int64   `json:"lost"`         // Expected - Received
	LossPct    float64 `json:"loss_pct"`     // 100 * Lost / Expected
	Duplicates int64   `json:"duplicates"`   // repeated deliveries (QoS 1 resends)
	Strays     int64   `json:"strays"`       // messages of another run or publisher
	ConnLost   int64   `json:"conn_lost"`    // clients that lost their connection
	TimedOut   bool    `json:"timed_out"`    // Duration ended the send phase before Count
	SendSecs   float64 `json:"send_secs"`    // first publish to last publish done
	RecvSecs   float64 `json:"recv_secs"`    // first publish to last receipt
	SentRate   float64 `json:"sent_per_s"`   // Sent / SendSecs
	RecvRate   float64 `json:"recv_per_s"`   // Received / RecvSecs
	Latency    Latency `json:"latency"`      // publish to receipt
	ConnectSec float64 `json:"connect_secs"` // connecting and subscribing every client
}

func (c *Config) defaults() error {
	if c.Inflight <= 0 {
		c.Inflight = 64
	}
	if c.Drain <= 0 {
		c.Drain = 2 * time.Second
	}
	if c.ConnectParallel <= 0 {
		c.ConnectParallel = 16
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RunID == 0 {
		c.RunID = uint64(c.Now().UnixNano())
	}
	switch {
	case len(c.Publishers) == 0:
		return errors.New("no publishers")
	case len(c.Publishers)+len(c.Subscribers) > MaxClients:
		return fmt.Errorf("%d clients: at most %d", len(c.Publishers)+len(c.Subscribers), MaxClients)
	case c.QoS > 1:
		return fmt.Errorf("qos %d: want 0 or 1", c.QoS)
	case c.Size < HeaderSize || c.Size > MaxSize:
		return fmt.Errorf("size %d: want %d..%d bytes", c.Size, HeaderSize, MaxSize)
	case c.Count <= 0 || c.Count > MaxCount:
		return fmt.Errorf("count %d: want 1..%d messages per publisher (every run is bounded)", c.Count, MaxCount)
	case c.Duration <= 0 || c.Duration > MaxDuration:
		return fmt.Errorf("duration %s: want up to %s (every run is bounded)", c.Duration, MaxDuration)
	case c.Rate < 0:
		return fmt.Errorf("rate %g: must not be negative", c.Rate)
	}
	for i, s := range c.Subscribers {
		for _, p := range s.From {
			if p < 0 || p >= len(c.Publishers) {
				return fmt.Errorf("subscriber %d expects publisher %d of %d", i, p, len(c.Publishers))
			}
		}
	}
	return nil
}

// run is the state of one Run.
type run struct {
	cfg      Config
	inboxes  []*inbox
	sent     []atomic.Int64 // per publisher: publishes issued
	pubErrs  atomic.Int64
	connLost atomic.Int64

	pubs []paho.Client // by publisher index; written once each by connect

	mu      sync.Mutex // guards clients
	clients []paho.Client
}

// Run connects every client, publishes, drains and reports. It returns an
// error when the run could not take place (bad config, non-loopback URL, a
// client that cannot connect or subscribe); loss is a result, not an error.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.defaults(); err != nil {
		return Result{}, fmt.Errorf("load: %w", err)
	}
	if err := CheckLoopback(ctx, cfg.URL); err != nil {
		return Result{}, fmt.Errorf("load: %w", err)
	}
	r := &run{cfg: cfg, sent: make([]atomic.Int64, len(cfg.Publishers))}
	defer r.disconnectAll()

	t0 := cfg.Now()
	if err := r.connect(ctx); err != nil {
		return Result{}, fmt.Errorf("load: %w", err)
	}
	connectSecs := cfg.Now().Sub(t0).Seconds()

	start := cfg.Now()
	stop := r.startProgress(start, "send")
	sendEnd, timedOut := r.send(ctx, start)
	stop()
	stop = r.startProgress(start, "drain")
	r.drain(ctx)
	stop()

	res := r.result(start, sendEnd)
	res.TimedOut, res.ConnectSec = timedOut, connectSecs
	return res, nil
}

// connect connects the subscribers (and subscribes them), then the
// publishers, ConnectParallel at a time.
func (r *run) connect(ctx context.Context) error {
	cfg := &r.cfg
	r.inboxes = make([]*inbox, len(cfg.Subscribers))
	for i, s := range cfg.Subscribers {
		r.inboxes[i] = newInbox(cfg.RunID, s.From, cfg.Count)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cfg.ConnectParallel)
	for i, s := range cfg.Subscribers {
		g.Go(func() error {
			c, err := r.dial(gctx, s.Account)
			if err != nil {
				return err
			}
			in := r.inboxes[i]
			tok := c.Subscribe(s.Filter, cfg.QoS, func(_ paho.Client, m paho.Message) {
				in.record(m.Payload(), cfg.Now().UnixNano())
			})
			if err := wait(gctx, tok, connectWait); err != nil {
				return fmt.Errorf("subscribe %s to %s: %w", s.ClientID, s.Filter, err)
			}
			if st, ok := tok.(*paho.SubscribeToken); ok {
				if code := st.Result()[s.Filter]; code > 1 {
					return fmt.Errorf("subscribe %s to %s: refused (code %#x)", s.ClientID, s.Filter, code)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(cfg.ConnectParallel)
	r.pubs = make([]paho.Client, len(cfg.Publishers))
	for i, p := range cfg.Publishers {
		g.Go(func() error {
			c, err := r.dial(gctx, p.Account)
			r.pubs[i] = c
			return err
		})
	}
	return g.Wait()
}

// dial connects one client and remembers it for disconnectAll.
func (r *run) dial(ctx context.Context, a Account) (paho.Client, error) {
	opts := paho.NewClientOptions().AddBroker(r.cfg.URL).
		SetClientID(a.ClientID).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(connectWait).SetKeepAlive(60 * time.Second).
		SetProtocolVersion(4).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			r.connLost.Add(1)
			if r.cfg.OnConnLost != nil {
				r.cfg.OnConnLost(a.ClientID, err)
			}
		})
	if a.Username != "" {
		opts.SetUsername(a.Username)
	}
	if a.Password != nil {
		opts.SetPassword(a.Password())
	}
	c := paho.NewClient(opts)
	if err := wait(ctx, c.Connect(), connectWait); err != nil {
		return nil, fmt.Errorf("connect %s: %w", a.ClientID, err)
	}
	r.mu.Lock()
	r.clients = append(r.clients, c)
	r.mu.Unlock()
	return c, nil
}

// disconnectAll disconnects every client in parallel and waits.
func (r *run) disconnectAll() {
	r.mu.Lock()
	clients := r.clients
	r.clients = nil
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() { c.Disconnect(250) })
	}
	wg.Wait()
}

// wait waits for tok, at most d and while ctx lives.
func wait(ctx context.Context, tok paho.Token, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-t.C:
		return fmt.Errorf("no answer within %s", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}
