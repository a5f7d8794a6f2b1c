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

// Lossless delivery to slow subscribers.
//
// mochi gives each client an outbound queue of MaximumClientWritesPending
// packets, filled by publishers' goroutines and drained by the client's
// write loop. When it is full, mochi drops the message, even at QoS 1, and
// never resends it while the client stays connected (DESIGN §7: ~30% lost
// with 20 publishers into one subscriber). Two mechanisms close the gap:
//
//  1. Admission (admit, called from OnACLCheck just before mochi enqueues a
//     delivery): while the subscriber's queue is nearly full, the publishing
//     goroutine waits. A publisher's goroutine is its connection's reader, so
//     TCP flow control then slows the publisher down: backpressure.
//  2. Fallback (redeliver, from OnPublishDropped): a message that still finds
//     the queue full (several publishers raced for the last slots) is given a
//     packet ID, recorded in the client's inflight store and written
//     synchronously once the queue has drained, so it is not reordered
//     behind messages queued before it.
//
// A subscriber that does not drain its queue within SlowClientTimeout is
// disconnected (its persistent session keeps the inflight messages), so one
// stuck client cannot stall its publishers forever.
//
// Both read the queue length, which mochi keeps in the unexported
// ClientState.outboundQty (updated atomically; decremented after the packet
// is written). pendingWrites locates the field once by reflection; if a
// mochi upgrade removes it, admission is skipped and fallback writes at once.

// admitSlack is how many free slots admission keeps for racing publishers.
func (s *Server) admitSlack() int32 {
	return int32(min(max(s.cfg.ClientWritesPending/8, 1), 64))
}

var outboundQty = sync.OnceValues(func() (uintptr, bool) {
	f, ok := reflect.TypeFor[mqtt.ClientState]().FieldByName("outboundQty")
	if !ok || f.Type.Kind() != reflect.Int32 {
		return 0, false
	}
	return f.Offset, true
})

// pendingWrites returns how many packets wait in cl's outbound queue.
func pendingWrites(cl *mqtt.Client) (int32, bool) {
	off, ok := outboundQty()
	if !ok {
		return 0, false
	}
	return atomic.LoadInt32((*int32)(unsafe.Add(unsafe.Pointer(&cl.State), off))), true
}

var (
	errSlowConsumer = errors.New("subscriber did not drain its queue in time")
	errClientGone   = errors.New("client disconnected")
)

// waitPending waits until cl's outbound queue holds at most limit packets.
func (s *Server) waitPending(cl *mqtt.Client, limit int32) error {
	n, ok := pendingWrites(cl)
	if !ok || n <= limit {
		return nil
	}
	start := time.Now()
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
		if n, _ = pendingWrites(cl); n <= limit {
			return nil
		}
		if time.Since(start) > s.cfg.SlowClientTimeout {
			return errSlowConsumer
		}
	}
}

// admit blocks the publishing goroutine while cl's queue is nearly full.
func (s *Server) admit(cl *mqtt.Client) {
	if s.noBackpressure || s.noAdmission || cl.Closed() {
		return
	}
	limit := int32(s.cfg.ClientWritesPending) - s.admitSlack()
	if n, ok := pendingWrites(cl); !ok || n < limit {
		return
	}
	s.m.backpressure.Inc()
	if err := s.waitPending(cl, limit-1); errors.Is(err, errSlowConsumer) {
		s.dropSlow(cl)
	}
}

// dropSlow disconnects a subscriber that stopped reading.
func (s *Server) dropSlow(cl *mqtt.Client) {
	s.reject(Rejection{Username: string(cl.Properties.Username), ClientID: cl.ID,
		Reason: ReasonSlowConsumer, Detail: "queue not drained in " + s.cfg.SlowClientTimeout.String()})
	cl.Stop(errSlowConsumer)
}

// redeliver delivers pk, which mochi could not queue for cl, by writing it
// directly once cl's queue has drained.
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
	if err := s.waitPending(cl, 0); err != nil {
		// QoS>0 stays inflight: a persistent session gets it on reconnect.
		s.m.dropped.Inc()
		if errors.Is(err, errSlowConsumer) {
			s.dropSlow(cl)
		}
		return
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
