package devicesim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// errConnLost ends one connection so the loop can back off and retry.
var errConnLost = errors.New("connection lost")

// connLoop connects, stays connected until the connection drops, and
// reconnects with jittered exponential backoff, until ctx is done. Each
// connection uses a fresh paho client, so paho's own reconnect logic (not
// jittered) stays off and every attempt computes a fresh password token.
func (d *Device) connLoop(ctx context.Context) error {
	failures := 0
	wasOnline := false
	for ctx.Err() == nil {
		err := d.connectOnce(ctx, wasOnline)
		if ctx.Err() != nil {
			return nil
		}
		msg := "connection lost"
		if errors.Is(err, errConnLost) {
			wasOnline = true
			failures = 0 // it was up: start the backoff again from the minimum
		} else {
			msg = "connect failed"
			d.connectFailures.Add(1)
			failures++
		}
		delay := d.backoff(failures)
		d.log.Warn().Err(err).Dur("retry_in", delay).Msg(msg)
		if err := d.clk.Sleep(ctx, delay); err != nil {
			return nil
		}
	}
	return nil
}

// backoff is the delay after failures consecutive failed attempts:
// MinBackoff doubled per failure, capped at MaxBackoff, then jittered.
func (d *Device) backoff(failures int) time.Duration {
	v := d.cfg.MinBackoff
	for i := 1; i < failures && v < d.cfg.MaxBackoff; i++ {
		v *= 2
	}
	return d.jitter(min(v, d.cfg.MaxBackoff))
}

// connectOnce makes one connection and serves it until it is lost (it then
// returns an error wrapping errConnLost) or ctx is done (it then says
// goodbye and returns nil). Other errors mean the connection never came up.
func (d *Device) connectOnce(ctx context.Context, wasOnline bool) error {
	if g := d.cfg.Gate; g != nil {
		if err := g.Acquire(ctx); err != nil {
			return err
		}
	}
	lost := make(chan error, 1)
	c := mqtt.NewClient(d.clientOptions(lost))
	ct := c.Connect()
	err := d.wait(context.WithoutCancel(ctx), ct, d.cfg.ConnectTimeout+time.Second)
	if t, ok := ct.(*mqtt.ConnectToken); ok && err != nil && (t.ReturnCode() == 4 || t.ReturnCode() == 5) {
		d.connectRefused() // bad username or password: during a key rotation, try the other key
	} else if err == nil {
		d.connected()
	}
	if err == nil {
		err = d.subscribe(ctx, c)
	}
	if err == nil {
		err = d.publishOn(ctx, c, topics.KindBirth, d.birth(true))
	}
	if err == nil {
		d.ackPendingRotation(ctx, c)
	}
	if g := d.cfg.Gate; g != nil {
		g.Release()
	}
	if err != nil {
		c.Disconnect(0)
		return fmt.Errorf("connect: %w", err)
	}

	d.mu.Lock()
	d.client = c
	d.mu.Unlock()
	d.online.Store(true)
	d.connects.Add(1)
	if wasOnline {
		d.reconnects.Add(1)
	}
	d.log.Info().Bool("reconnect", wasOnline).Msg("online")
	d.hookMu.Lock()
	hooks := d.onConnect
	d.hookMu.Unlock()
	for _, h := range hooks {
		h(ctx)
	}

	select {
	case err = <-lost:
	case <-ctx.Done():
	}
	d.online.Store(false)
	d.mu.Lock()
	d.client = nil
	d.mu.Unlock()
	if ctx.Err() == nil {
		c.Disconnect(0)
		return fmt.Errorf("%w: %w", errConnLost, err)
	}
	var rb rebootError
	if !errors.As(context.Cause(ctx), &rb) {
		// A clean shutdown sends a signed offline birth: a DISCONNECT
		// suppresses the will, and the backend should not wait for a
		// keepalive timeout to learn that the device is gone.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		if err := d.publishOn(bctx, c, topics.KindBirth, d.birth(false)); err != nil {
			d.log.Debug().Err(err).Msg("offline birth not sent")
		}
		cancel()
	}
	c.Disconnect(250)
	d.log.Info().Msg("offline")
	return nil
}

func (d *Device) clientOptions(lost chan<- error) *mqtt.ClientOptions {
	will, _ := json.Marshal(topics.Will{Online: false})
	clean := d.cfg.CleanSession == nil || *d.cfg.CleanSession
	o := mqtt.NewClientOptions().
		AddBroker(d.cfg.Broker).
		SetClientID(d.id).
		SetCredentialsProvider(func() (string, string) {
			return d.id, envelope.Password(d.passwordKeys(), d.id, d.clk.Now())
		}).
		SetCleanSession(clean).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(d.cfg.ConnectTimeout).
		SetKeepAlive(d.cfg.KeepAlive).
		SetPingTimeout(min(d.cfg.KeepAlive, 10*time.Second)).
		SetWriteTimeout(d.cfg.PublishTimeout).
		SetBinaryWill(topics.DeviceUp(d.id, topics.KindBirth), will, 1, false).
		SetOrderMatters(true).
		SetDefaultPublishHandler(d.onMessage).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if d.cfg.TLS != nil {
		o.SetTLSConfig(d.cfg.TLS)
	}
	return o
}

func (d *Device) subscribe(ctx context.Context, c mqtt.Client) error {
	filter := topics.DeviceDownFilter(d.id)
	t := c.Subscribe(filter, 1, d.onMessage)
	if err := d.wait(ctx, t, d.cfg.PublishTimeout); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if st, ok := t.(*mqtt.SubscribeToken); ok {
		if code := st.Result()[filter]; code >= 0x80 {
			return fmt.Errorf("subscribe %s: refused by broker (code %#x)", filter, code)
		}
	}
	return nil
}

// onMessage runs on paho's router goroutine. It must never block: a
// handler that publishes waits for a PUBACK that the same goroutine would
// have to route. So it queues the message and drops it (counted) when the
// inbox is full, as a firmware with a fixed receive buffer would.
func (d *Device) onMessage(_ mqtt.Client, m mqtt.Message) {
	select {
	case d.inbox <- inbound{topic: m.Topic(), payload: m.Payload()}:
	default:
		d.dropped.Add(1)
		d.log.Warn().Str("topic", m.Topic()).Msg("downlink dropped: inbox full")
	}
}

// dispatch verifies queued downlinks and hands them to their handlers.
func (d *Device) dispatch(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-d.inbox:
			d.deliver(ctx, m)
		}
	}
}

// deliver verifies one downlink: topic, MAC, anti-replay window (persisted
// before the message is applied, so a replay is refused even after a power
// cut), then dispatches it by kind.
func (d *Device) deliver(ctx context.Context, m inbound) {
	t, err := topics.Parse(m.topic)
	if err != nil || t.Class != topics.ClassDevice || t.Device != d.id || t.Dir != topics.Down {
		d.reject(m.topic, "topic", err)
		return
	}
	msg, err := d.openDownlink(m.topic, m.payload)
	if err != nil {
		reason := envelope.Reason(err)
		if reason == "" {
			reason = envelope.ReasonMalformed
		}
		d.reject(m.topic, reason, err)
		return
	}
	if err := d.acceptNonce(msg.Nonce); err != nil {
		reason := envelope.Reason(err) // replay or stale_nonce
		if reason == "" {
			reason = "flash"
		}
		d.reject(m.topic, reason, err)
		return
	}
	d.hookMu.Lock()
	h := d.handlers[t.Kind]
	d.hookMu.Unlock()
	if h == nil {
		d.unhandled.Add(1)
		d.log.Debug().Str("kind", t.Kind).Uint64("nonce", msg.Nonce).Msg("no handler for downlink")
		return
	}
	d.received.Add(1)
	if err := h(ctx, msg); err != nil {
		d.handlerErrors.Add(1)
		d.log.Error().Err(err).Str("kind", t.Kind).Uint64("nonce", msg.Nonce).Msg("downlink handler failed")
	}
}

// acceptNonce records n in the window and persists the window before the
// message is used.
func (d *Device) acceptNonce(n uint64) error {
	d.rxMu.Lock()
	defer d.rxMu.Unlock()
	w := d.rxWindow
	if err := w.Accept(n); err != nil {
		return err
	}
	if err := d.fl.Save(RecordRxWindow, rxRecord(w)); err != nil {
		return fmt.Errorf("persist rx window: %w", err)
	}
	d.rxWindow = w
	return nil
}

func (d *Device) reject(topic, reason string, err error) {
	d.rejected.Add(1)
	d.log.Warn().Str("event", "security").Str("topic", topic).Str("reason", reason).Err(err).
		Msg("downlink rejected")
}
