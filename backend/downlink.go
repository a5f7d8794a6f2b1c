package backend

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/redis/go-redis/v9"
)

// txNonceScript allocates the next downlink nonce: max(last+1, floor),
// where floor is the current time in microseconds. The floor means that a
// backend whose Redis lost its state (the in-process store, a restore from
// an old dump) still never reuses a nonce the device has seen, unless it
// sent more than a million messages a second to one device.
// KEYS: txnonce. ARGV: floor.
var txNonceScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
local f = tonumber(ARGV[1])
if n < f then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
-- An integer reply: tostring would print 14 significant digits.
return n
`)

// Send seals body for device dev with its keys and a fresh nonce and
// publishes it at QoS 1 on topics.DeviceDown(dev, kind). body is marshalled
// to JSON unless it is already []byte or json.RawMessage.
func (s *Service) Send(ctx context.Context, dev, kind string, body any) error {
	return s.send(ctx, dev, kind, body, s.cfg.EncryptDownlink)
}

// send is Send with the encryption chosen by the caller (rotate_key is
// always encrypted).
func (s *Service) send(ctx context.Context, dev, kind string, body any, encrypt bool) error {
	topic := topics.DeviceDown(dev, kind)
	if _, err := topics.Parse(topic); err != nil {
		return &Error{Code: CodeInvalid, Message: "bad device or downlink kind", Err: err}
	}
	var raw []byte
	switch b := body.(type) {
	case []byte:
		raw = b
	case json.RawMessage:
		raw = b
	default:
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return fmt.Errorf("send %s to %s: %w", kind, dev, err)
		}
	}
	keys, err := s.DeviceKeys(ctx, dev)
	if err != nil {
		return fmt.Errorf("send %s to %s: %w", kind, dev, err)
	}
	now := s.now()
	n, err := txNonceScript.Run(ctx, s.rdb, []string{s.keys.TxNonce(dev)}, now.UnixMicro()).Uint64()
	if err != nil {
		return Unavailable("send "+kind+" to "+dev+": nonce", err)
	}
	if n > envelope.MaxNonce {
		return fmt.Errorf("send %s to %s: downlink nonces exhausted", kind, dev)
	}
	env, err := envelope.Seal(keys, topic, n, now, raw, encrypt, s.random)
	if err != nil {
		return &Error{Code: CodeInvalid, Message: "message cannot be sealed", Err: fmt.Errorf("send %s to %s: %w", kind, dev, err)}
	}
	if err := s.bus.Publish(ctx, topic, env, 1); err != nil {
		return &Error{Code: CodeUnavailable, Message: "broker unavailable", Err: fmt.Errorf("send %s to %s: %w", kind, dev, err)}
	}
	s.m.downlink.WithLabelValues(kind).Inc()
	return nil
}

// txNonceBlockScript reserves count consecutive downlink nonces in one
// round trip, with the same floor as txNonceScript, and returns the last.
// KEYS: txnonce. ARGV: floor, count.
var txNonceBlockScript = redis.NewScript(`
local c = tonumber(ARGV[2])
local n = redis.call('INCRBY', KEYS[1], c)
if n - c + 1 < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  n = redis.call('INCRBY', KEYS[1], c - 1)
end
return n
`)

// SendBinary seals each payload for device dev in the binary envelope
// (envelope.SealBinary) and publishes them in order at QoS 1 on
// topics.DeviceDown(dev, kind). The nonces of all payloads are reserved in
// one Redis round trip. It is the path of FOTA chunks.
func (s *Service) SendBinary(ctx context.Context, dev, kind string, payloads ...[]byte) error {
	if len(payloads) == 0 {
		return nil
	}
	topic := topics.DeviceDown(dev, kind)
	if _, err := topics.Parse(topic); err != nil {
		return &Error{Code: CodeInvalid, Message: "bad device or downlink kind", Err: err}
	}
	keys, err := s.DeviceKeys(ctx, dev)
	if err != nil {
		return fmt.Errorf("send %s to %s: %w", kind, dev, err)
	}
	now := s.now()
	last, err := txNonceBlockScript.Run(ctx, s.rdb, []string{s.keys.TxNonce(dev)}, now.UnixMicro(), len(payloads)).Uint64()
	if err != nil {
		return Unavailable("send "+kind+" to "+dev+": nonce", err)
	}
	if last > envelope.MaxNonce {
		return fmt.Errorf("send %s to %s: downlink nonces exhausted", kind, dev)
	}
	first := last - uint64(len(payloads)) + 1
	for i, p := range payloads {
		env, err := envelope.SealBinary(keys, topic, first+uint64(i), now, p)
		if err != nil {
			return &Error{Code: CodeInvalid, Message: "message cannot be sealed", Err: fmt.Errorf("send %s to %s: %w", kind, dev, err)}
		}
		if err := s.bus.Publish(ctx, topic, env, 1); err != nil {
			return &Error{Code: CodeUnavailable, Message: "broker unavailable", Err: fmt.Errorf("send %s to %s: %w", kind, dev, err)}
		}
		s.m.downlink.WithLabelValues(kind).Inc()
	}
	return nil
}
