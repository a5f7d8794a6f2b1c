package broker

import (
	"errors"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Lossless delivery to slow device subscribers.
//
// mochi gives each client an outbound queue of MaximumClientWritesPending
// packets, filled by publishers' goroutines and drained by the client's
// write loop. When it is full, mochi drops the message, even at QoS 1, and
// never resends it while the client stays connected (measured: ~30% lost
// with 20 publishers into one subscriber).
//
// Two mechanisms close the gap for every subscriber, device or operator:
//
//  1. Admission (admit, called from OnACLCheck just before mochi enqueues a
//     delivery): while the subscriber's queue is nearly full, the publishing
//     goroutine waits. A network publisher's goroutine is its connection's
//     reader, so TCP flow control then slows it down: backpressure.
//  2. Fallback (redeliver, from OnPublishDropped): a message that still finds
//     the queue full (several publishers raced for the last slots) is given a
//     packet ID, recorded in the client's inflight store and appended to the
//     queue once there is room again, so it keeps its place after the
//     messages queued before it.
//
// A subscriber whose queue makes no progress for its timeout is disconnected
// (a persistent session keeps the inflight messages). Delivery runs in the
// publisher's goroutine, and for events that is a backend worker, so the
// timeout is short: SlowClientTimeout (2 s) for devices, OperatorSlowTimeout
// (1 s) for operators. A viewer that stops reading holds backend publishes
// at most that long, once per connection, and is cut off; a viewer that
// reads, however slowly, loses nothing.
//
// Both read the queue length, which mochi keeps in the unexported
// ClientState.outboundQty (updated atomically; decremented after the packet
// is written); redeliver also appends to the unexported ClientState.outbound
// channel. The fields are located once by reflection; if a mochi upgrade
// removes them, admission is skipped and fallback writes at once.

// admitSlack is how many free slots admission keeps for racing publishers.
func (s *Server) admitSlack() int32 {
	return int32(min(max(s.cfg.ClientWritesPending/8, 1), 64))
}

// stateField returns the offset in mqtt.ClientState of the unexported field
// name, if it has type T.
func stateField[T any](name string) func() (uintptr, bool) {
	return sync.OnceValues(func() (uintptr, bool) {
		f, ok := reflect.TypeFor[mqtt.ClientState]().FieldByName(name)
		if !ok || f.Type != reflect.TypeFor[T]() {
			return 0, false
		}
		return f.Offset, true
	})
}

var (
	outboundQty = stateField[int32]("outboundQty")
	outboundCh  = stateField[chan *packets.Packet]("outbound")
)

// pendingWrites returns how many packets wait in cl's outbound queue.
func pendingWrites(cl *mqtt.Client) (int32, bool) {
	off, ok := outboundQty()
	if !ok {
		return 0, false
	}
	return atomic.LoadInt32((*int32)(unsafe.Add(unsafe.Pointer(&cl.State), off))), true
}

// canEnqueue reports whether enqueue can reach mochi's queue.
func canEnqueue() bool {
	_, ok1 := outboundCh()
	_, ok2 := outboundQty()
	return ok1 && ok2
}

// enqueue appends pk to cl's outbound queue as mochi's publishToClient does.
// It reports false if the queue is full or cannot be reached.
func enqueue(cl *mqtt.Client, pk *packets.Packet) bool {
	if !canEnqueue() {
		return false
	}
	chOff, _ := outboundCh()
	qtyOff, _ := outboundQty()
	// The channel is made with the client and never replaced.
	ch := *(*chan *packets.Packet)(unsafe.Add(unsafe.Pointer(&cl.State), chOff))
	select {
	case ch <- pk:
		atomic.AddInt32((*int32)(unsafe.Add(unsafe.Pointer(&cl.State), qtyOff)), 1)
		return true
	default:
		return false
	}
}

var (
	errSlowConsumer = errors.New("subscriber did not drain its queue in time")
	errClientGone   = errors.New("client disconnected")
)

// waitPending waits until cl's outbound queue holds at most limit packets.
// It gives up with errSlowConsumer only when the queue has not shrunk for
// SlowClientTimeout: a device that reads, but slower than it is fed, is not
// cut off.
func (s *Server) waitPending(cl *mqtt.Client, limit int32, timeout time.Duration) error {
	n, ok := pendingWrites(cl)
	if !ok || n <= limit {
		return nil
	}
	progress := time.Now()
	pause := 20 * time.Microsecond
	for {
		if cl.Closed() {
			return errClientGone
		}
		if s.closing.Load() {
			return ErrClosed
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Millisecond)
		m, _ := pendingWrites(cl)
		if m <= limit {
			return nil
		}
		if m < n {
			progress = time.Now()
		}
		n = m
		if time.Since(progress) > timeout {
			return errSlowConsumer
		}
	}
}

// admitLimit is the queue length at which admission makes publishers wait.
func (s *Server) admitLimit() int32 {
	return int32(s.cfg.ClientWritesPending) - s.admitSlack()
}

// slowTimeout is how long cl's queue may make no progress before cl is
// cut off (see the top of this file).
func (s *Server) slowTimeout(id *identity) time.Duration {
	if id != nil && !id.device {
		return s.cfg.OperatorSlowTimeout
	}
	return s.cfg.SlowClientTimeout
}

// admit blocks the publishing goroutine while cl's queue is nearly full.
func (s *Server) admit(cl *mqtt.Client, id *identity) {
	if s.noBackpressure || s.noAdmission || cl.Closed() {
		return
	}
	limit := s.admitLimit()
	if n, ok := pendingWrites(cl); !ok || n < limit {
		return
	}
	s.m.backpressure.Inc()
	timeout := s.slowTimeout(id)
	if err := s.waitPending(cl, limit-1, timeout); errors.Is(err, errSlowConsumer) {
		s.dropSlow(cl, "queue made no progress in "+timeout.String())
	}
}

// dropSlow disconnects a subscriber that stopped reading, counting it once
// (the queue's admission and the socket's writer may both find it slow).
func (s *Server) dropSlow(cl *mqtt.Client, detail string) {
	if wc := writeConnOf(cl.Net.Conn); wc != nil && !wc.reportSlow() {
		cl.Stop(errSlowConsumer)
		return
	}
	kind := "device"
	if s.isOperator(cl) {
		kind = "operator"
	}
	cl.Stop(errSlowConsumer) // first: once it is reported, the client is gone
	s.m.slowClients.WithLabelValues(kind).Inc()
	s.reject(Rejection{Username: string(cl.Properties.Username), ClientID: cl.ID, Operator: kind == "operator",
		Reason: ReasonSlowConsumer, Detail: detail})
}

// redeliver delivers pk, which mochi could not queue for cl, by queueing it
// once there is room.
func (s *Server) redeliver(cl *mqtt.Client, pk packets.Packet) {
	if s.noBackpressure {
		s.m.dropped.Inc()
		return
	}
	sub, ok := subscriptionOf(s.mochi, cl.ID, pk.TopicName)
	if !ok { // unsubscribed meanwhile
		return
	}
	out := pk.Copy(false)
	out.FixedHeader.Qos = min(pk.FixedHeader.Qos, sub.Qos, s.mochi.Options.Capabilities.MaximumQos)
	out.FixedHeader.Retain = pk.FixedHeader.Retain && cl.Properties.ProtocolVersion == 5 && sub.RetainAsPublished
	out.FixedHeader.Dup = false
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
	out.Properties.SubscriptionIdentifier = nil
	for _, id := range sub.Identifiers {
		out.Properties.SubscriptionIdentifier = append(out.Properties.SubscriptionIdentifier, id)
	}
	slices.Sort(out.Properties.SubscriptionIdentifier)
	if out.FixedHeader.Qos > 0 {
		id, err := cl.NextPacketID()
		if err != nil {
			s.m.dropped.Inc()
			s.log.Warn().Err(err).Str("client_id", cl.ID).Msg("packet ids exhausted; message dropped")
			return
		}
		out.PacketID = uint16(id)
		if cl.State.Inflight.Set(out) {
			atomic.AddInt64(&s.mochi.Info.Inflight, 1)
		}
		cl.State.Inflight.DecreaseSendQuota()
	}
	timeout := s.slowTimeout(s.identityOf(cl))
	for {
		err := s.waitPending(cl, s.admitLimit()-1, timeout)
		if err != nil {
			// QoS>0 stays inflight: a persistent session gets it on reconnect.
			s.m.dropped.Inc()
			if errors.Is(err, errSlowConsumer) {
				s.dropSlow(cl, "queue made no progress in "+timeout.String())
			}
			return
		}
		if enqueue(cl, &out) {
			s.m.redeliveries.Inc()
			return
		}
		if !canEnqueue() {
			break // mochi changed: write directly
		}
		time.Sleep(20 * time.Microsecond) // another publisher took the room
	}
	if err := cl.WritePacket(out); err != nil {
		s.m.dropped.Inc()
		s.log.Debug().Err(err).Str("client_id", cl.ID).Msg("redelivery write failed")
		return
	}
	s.m.redeliveries.Inc()
}

// subscriptionOf returns client id's subscription matching topic.
func subscriptionOf(m *mqtt.Server, id, topic string) (packets.Subscription, bool) {
	subs := m.Topics.Subscribers(topic)
	if sub, ok := subs.Subscriptions[id]; ok {
		return sub, true
	}
	for _, group := range subs.Shared {
		if sub, ok := group[id]; ok {
			return sub, true
		}
	}
	return packets.Subscription{}, false
}
