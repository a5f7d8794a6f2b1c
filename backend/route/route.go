// Package route joins the replicas of replica mode through Redis sharded
// pub/sub (docs/DECISIONS.md, "Replica mode"). Every replica terminates
// device connections on its own embedded broker; Router is the Bus the
// backend publishes on, in front of that broker:
//
//   - a downlink (ecowatt/v1/dev/{id}/down/...) goes to the broker of the
//     replica that holds the device's connection, as recorded in the
//     device hash (field replica, while conn_down < conn_gen): published
//     locally when that is this replica or no replica, else SPUBLISHed on
//     the holder's channel <prefix>route:{replica}, whose Router publishes
//     it on its broker;
//   - an event (ecowatt/v1/events/...) is published locally and SPUBLISHed
//     on <prefix>events, from which every other replica publishes it on
//     its broker and hands it to its SSE subscribers, so each replica's
//     observers see every event once;
//   - a session takeover across replicas (Takeover) SPUBLISHes a close
//     request to the old holder, which closes the older connection;
//   - a change of a device's key or state (Invalidate, called by
//     backend.Accounts.OnForget) and a session close for disable or
//     decommission (CloseSession) SPUBLISH a forget on <prefix>events:
//     every other replica drops the device's cached keys (HandleForget)
//     and, for a close, closes the device's session on its broker.
//
// Delivery is at most once per publish, like MQTT QoS 1 to a device that
// is not connected: a replica that is down or resubscribing loses what was
// routed to it. The protocols above recover by their own retries (config
// sweep, command re-send at birth, FOTA resume by the device).
package route

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
)

// Sessions closes a device's older connections on this replica's broker
// (broker.Server.CloseDevice).
type Sessions interface {
	CloseDevice(id string, gen uint64) int
}

// Config holds a Router's dependencies. Local, Redis and Replica are
// required.
type Config struct {
	Local      backend.Bus // this replica's broker
	Sessions   Sessions    // nil: close requests are ignored
	Redis      redis.UniversalClient
	Keys       store.Keys // zero: store.DefaultPrefix
	Replica    string
	Logger     zerolog.Logger
	Registerer prometheus.Registerer // default: a private registry
	Workers    int                   // local deliveries in parallel, by device; default 8
}

// Router is a backend.Bus that routes through Redis. Create it with New,
// set HandleEvents, then Run it.
type Router struct {
	cfg     Config
	keys    store.Keys
	log     zerolog.Logger
	m       *metrics
	events  func(payload []byte) error // set before Run
	forget  func(id string)            // set before Run
	flush   func()                     // set before Run
	ready   atomic.Int32               // subscriptions confirmed (2 when ready)
	closing chan closeReq
	workers []chan frame
}

type closeReq struct {
	dev, replica string
	gen          uint64
}

var (
	_ backend.Bus           = (*Router)(nil)
	_ backend.SessionCloser = (*Router)(nil)
)

// New checks cfg and registers the metrics.
func New(cfg Config) (*Router, error) {
	if cfg.Local == nil || cfg.Redis == nil || cfg.Replica == "" {
		return nil, errors.New("route: Local, Redis and Replica are required")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	r := &Router{cfg: cfg, keys: cfg.Keys.OrDefault(), m: m,
		log:     cfg.Logger.With().Str("component", "route").Logger(),
		closing: make(chan closeReq, 1024),
		workers: make([]chan frame, cfg.Workers)}
	for i := range r.workers {
		r.workers[i] = make(chan frame, 256)
	}
	return r, nil
}

// HandleEvents sets where events from other replicas go besides the local
// broker (backend.Service.DeliverEvent, for SSE). Call it before Run.
func (r *Router) HandleEvents(fn func(payload []byte) error) { r.events = fn }

// HandleForget sets what drops a device's cached keys when another replica
// changed them (backend.Accounts.Forget), and what drops them all when the
// subscription was re-established and some changes may have been missed
// (backend.Accounts.ForgetAll). Call it before Run.
func (r *Router) HandleForget(one func(id string), all func()) { r.forget, r.flush = one, all }

// Invalidate tells every other replica to drop device id's cached keys
// (backend.Accounts.OnForget). It is called after the change is in Redis,
// and waits for the publish, so that a change returned to the operator is
// known everywhere. A replica that misses it (down, resubscribing) drops
// its whole cache when its subscription is back.
func (r *Router) Invalidate(id string) { r.sendForget(id, "") }

// CloseSession closes device id's session on this replica's broker and
// asks every other replica to close it on theirs (and drop its keys), for
// a device disabled or decommissioned here (backend.SessionCloser). It
// reports whether this replica had the session.
func (r *Router) CloseSession(id, reason string) bool {
	if reason == "" {
		reason = "session closed"
	}
	r.sendForget(id, reason)
	if c, ok := r.cfg.Local.(backend.SessionCloser); ok {
		return c.CloseSession(id, reason)
	}
	return false
}

func (r *Router) sendForget(id, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	f := frame{kind: kindForget, origin: r.cfg.Replica, topic: id, payload: []byte(reason)}
	if err := r.cfg.Redis.SPublish(ctx, r.eventsChannel(), encode(f)).Err(); err != nil {
		r.m.forgetErrors.Inc()
		r.log.Error().Err(err).Str("device", id).Msg("route: key-cache invalidation not sent; other replicas keep the old key until their cache TTL")
	}
}

// Channel names. A sharded channel lives on the Cluster node of its slot;
// each replica's channel hashes apart, the events channel is one slot.
func (r *Router) replicaChannel(replica string) string { return r.keys.Prefix() + "route:" + replica }
func (r *Router) eventsChannel() string                { return r.keys.Prefix() + "events" }

// Publish routes a downlink to the holding replica and fans an event out
// to every replica; anything else is published locally.
func (r *Router) Publish(ctx context.Context, topic string, payload []byte, qos byte) error {
	t, err := topics.Parse(topic)
	switch {
	case err == nil && t.Class == topics.ClassDevice && t.Dir == topics.Down:
		holder, err := r.holder(ctx, t.Device)
		if err != nil {
			return err
		}
		if holder == "" || holder == r.cfg.Replica {
			r.m.downlinks.WithLabelValues("local").Inc()
			return r.cfg.Local.Publish(ctx, topic, payload, qos)
		}
		n, err := r.cfg.Redis.SPublish(ctx, r.replicaChannel(holder), encode(frame{kind: kindDown, origin: r.cfg.Replica, topic: topic, payload: payload, qos: qos})).Result()
		if err != nil {
			return fmt.Errorf("route %s to replica %s: %w", topic, holder, err)
		}
		if n == 0 { // the holder is not subscribed: gone or restarting; the device reconnects elsewhere
			r.m.downlinks.WithLabelValues("no_holder").Inc()
			return nil
		}
		r.m.downlinks.WithLabelValues("routed").Inc()
		return nil
	case err == nil && t.Class == topics.ClassEvents:
		lerr := r.cfg.Local.Publish(ctx, topic, payload, qos)
		if err := r.cfg.Redis.SPublish(ctx, r.eventsChannel(), encode(frame{kind: kindEvent, origin: r.cfg.Replica, topic: topic, payload: payload, qos: qos})).Err(); err != nil {
			r.m.eventFanoutErrors.Inc()
			return errors.Join(lerr, fmt.Errorf("route: fan out %s: %w", topic, err))
		}
		return lerr
	}
	return r.cfg.Local.Publish(ctx, topic, payload, qos)
}

// Subscribe is the local broker's: uplinks are handled where they arrive.
func (r *Router) Subscribe(filter string, h func(backend.Message)) error {
	return r.cfg.Local.Subscribe(filter, h)
}

// holder returns the replica holding dev's newest connection while it is
// open, "" when none does.
func (r *Router) holder(ctx context.Context, dev string) (string, error) {
	v, err := r.cfg.Redis.HMGet(ctx, r.keys.Device(dev), "replica", "conn_gen", "conn_down").Result()
	if err != nil {
		return "", backend.Unavailable("route "+dev, err)
	}
	replica, _ := v[0].(string)
	gen, _ := v[1].(string)
	down, _ := v[2].(string)
	g, _ := strconv.ParseUint(gen, 10, 64)
	d, _ := strconv.ParseUint(down, 10, 64)
	if g == 0 || d >= g {
		return "", nil
	}
	return replica, nil
}

// Takeover asks replica to close dev's connections older than gen
// (backend.Config.Takeover). It does not block: the request is sent by
// Run; when its queue is full the old session lives until its keepalive.
func (r *Router) Takeover(dev, replica string, gen uint64) {
	select {
	case r.closing <- closeReq{dev: dev, replica: replica, gen: gen}:
	default:
		r.m.closeDropped.Inc()
	}
}

// Ready reports whether both subscriptions are confirmed (for /readyz: a
// replica that cannot receive routed downlinks must not take devices).
func (r *Router) Ready() error {
	if r.ready.Load() < 2 {
		return errors.New("route: not subscribed to Redis")
	}
	return nil
}

// Run subscribes to this replica's channel and the events channel and
// delivers what arrives until ctx ends.
func (r *Router) Run(ctx context.Context) error {
	own, err := r.subscribe(ctx, r.replicaChannel(r.cfg.Replica))
	if err != nil {
		return err
	}
	defer own.Close()
	evs, err := r.subscribe(ctx, r.eventsChannel())
	if err != nil {
		return err
	}
	defer evs.Close()
	defer r.ready.Store(0)

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, ch := range r.workers {
		wg.Add(1)
		go func() { defer wg.Done(); r.worker(ctx, ch) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); r.sendCloses(ctx) }()
	ownCh := own.Channel(redis.WithChannelSize(1024))
	evCh := evs.ChannelWithSubscriptions(redis.WithChannelSize(1024))
	for {
		var msg *redis.Message
		ok := true
		select {
		case <-ctx.Done():
			return nil
		case msg, ok = <-ownCh:
		case m, ok2 := <-evCh:
			ok = ok2
			if sub, isSub := m.(*redis.Subscription); isSub {
				// go-redis re-subscribed after a lost connection: forgets
				// sent meanwhile are lost, so drop every cached key.
				r.log.Warn().Str("channel", sub.Channel).Msg("route: events channel re-subscribed; key cache dropped")
				if r.flush != nil {
					r.flush()
				}
				continue
			}
			msg, _ = m.(*redis.Message)
		}
		if !ok { // only Close ends a go-redis subscription channel
			return errors.New("route: subscription closed")
		}
		if msg == nil {
			continue
		}
		f, err := decode([]byte(msg.Payload))
		if err != nil {
			r.m.received.WithLabelValues("bad").Inc()
			r.log.Warn().Err(err).Str("channel", msg.Channel).Msg("route: bad frame dropped")
			continue
		}
		if f.origin == r.cfg.Replica { // our own event: delivered locally already
			continue
		}
		if f.kind == kindForget {
			// At once, ahead of queued downlinks: one sealed under the
			// old key is refused by the device anyway.
			r.m.received.WithLabelValues("forget").Inc()
			if r.forget != nil {
				r.forget(f.topic)
			}
			if len(f.payload) == 0 {
				continue
			}
		}
		select {
		case r.workers[shard(f.topic, len(r.workers))] <- f:
		case <-ctx.Done():
			return nil
		}
	}
}

// subscribe SSUBSCRIBEs to channel and waits for the confirmation.
func (r *Router) subscribe(ctx context.Context, channel string) (*redis.PubSub, error) {
	ps := r.cfg.Redis.SSubscribe(ctx, channel)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := ps.ReceiveTimeout(sctx, 10*time.Second); err != nil {
		ps.Close()
		return nil, fmt.Errorf("route: SSUBSCRIBE %s (sharded pub/sub needs Redis >= 7.0): %w", channel, err)
	}
	r.ready.Add(1)
	return ps, nil
}

// worker delivers frames in order; frames of one device share a worker.
func (r *Router) worker(ctx context.Context, ch <-chan frame) {
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-ch:
			r.deliver(ctx, f)
		}
	}
}

func (r *Router) deliver(ctx context.Context, f frame) {
	switch f.kind {
	case kindDown:
		r.m.received.WithLabelValues("downlink").Inc()
		if err := r.cfg.Local.Publish(ctx, f.topic, f.payload, f.qos); err != nil {
			r.log.Warn().Err(err).Str("topic", f.topic).Str("from", f.origin).Msg("route: routed downlink not published")
		}
	case kindEvent:
		r.m.received.WithLabelValues("event").Inc()
		if err := r.cfg.Local.Publish(ctx, f.topic, f.payload, f.qos); err != nil {
			r.log.Warn().Err(err).Str("topic", f.topic).Msg("route: remote event not published")
		}
		if r.events != nil {
			if err := r.events(f.payload); err != nil {
				r.log.Warn().Err(err).Str("topic", f.topic).Msg("route: remote event not delivered")
			}
		}
	case kindForget: // with a reason: close the device's session here
		if c, ok := r.cfg.Local.(backend.SessionCloser); ok && c.CloseSession(f.topic, string(f.payload)) {
			r.log.Info().Str("device", f.topic).Str("reason", string(f.payload)).Str("from", f.origin).Msg("route: session closed for another replica")
		}
	case kindClose:
		r.m.received.WithLabelValues("close").Inc()
		gen := binary.BigEndian.Uint64(f.payload)
		if r.cfg.Sessions != nil {
			n := r.cfg.Sessions.CloseDevice(f.topic, gen)
			r.m.closed.Add(float64(n))
			r.log.Debug().Str("device", f.topic).Uint64("gen", gen).Int("closed", n).Str("new_holder", f.origin).
				Msg("route: session taken over by another replica")
		}
	}
}

// sendCloses publishes the takeover close requests.
func (r *Router) sendCloses(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-r.closing:
			p := binary.BigEndian.AppendUint64(nil, c.gen)
			f := frame{kind: kindClose, origin: r.cfg.Replica, topic: c.dev, payload: p}
			if err := r.cfg.Redis.SPublish(ctx, r.replicaChannel(c.replica), encode(f)).Err(); err != nil {
				r.m.closeDropped.Inc()
				r.log.Warn().Err(err).Str("device", c.dev).Str("replica", c.replica).Msg("route: close request not sent")
			}
		}
	}
}

func shard(topic string, n int) int {
	dev := topic
	if t, err := topics.Parse(topic); err == nil && t.Device != "" {
		dev = t.Device
	}
	h := fnv.New32a()
	h.Write([]byte(dev))
	return int(h.Sum32() % uint32(n))
}
