package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

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

// TxNonceBlockLua defines the Lua function txblock(key, floor, count):
// it reserves count consecutive downlink nonces in key, with the same
// floor as txNonceScript, and returns the last. A script that serves
// downlinks (FOTA chunks) embeds it to reserve their nonces in the same
// round trip as its own checks, then calls SendBinaryFrom.
const TxNonceBlockLua = `
local function txblock(key, floor, count)
  local c = tonumber(count)
  local n = redis.call('INCRBY', key, c)
  if n - c + 1 < tonumber(floor) then
    redis.call('SET', key, floor)
    n = redis.call('INCRBY', key, c - 1)
  end
  return n
end
`

// txNonceBlockScript reserves count consecutive downlink nonces in one
// round trip and returns the last. KEYS: txnonce. ARGV: floor, count.
var txNonceBlockScript = redis.NewScript(TxNonceBlockLua + "return txblock(KEYS[1], ARGV[1], ARGV[2])\n")

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
	return s.sealBinary(ctx, dev, kind, topic, keys, last-uint64(len(payloads))+1, now, payloads)
}

// SendBinaryFrom is SendBinary with the nonces already reserved (by a
// script embedding TxNonceBlockLua, with floor at.UnixMicro()): payload i
// is sealed with nonce first+i and time at.
func (s *Service) SendBinaryFrom(ctx context.Context, dev, kind string, first uint64, at time.Time, payloads ...[]byte) error {
	if len(payloads) == 0 {
		return nil
	}
	topic := topics.DeviceDown(dev, kind)
	if _, err := topics.Parse(topic); err != nil {
		return &Error{Code: CodeInvalid, Message: "bad device or downlink kind", Err: err}
	}
	if first == 0 || first+uint64(len(payloads))-1 > envelope.MaxNonce {
		return fmt.Errorf("send %s to %s: downlink nonces exhausted", kind, dev)
	}
	keys, err := s.DeviceKeys(ctx, dev)
	if err != nil {
		return fmt.Errorf("send %s to %s: %w", kind, dev, err)
	}
	return s.sealBinary(ctx, dev, kind, topic, keys, first, at, payloads)
}

// sealBinary seals payload i with nonce first+i and publishes it.
func (s *Service) sealBinary(ctx context.Context, dev, kind, topic string, keys *envelope.Keys, first uint64, at time.Time, payloads [][]byte) error {
	for i, p := range payloads {
		env, err := envelope.SealBinary(keys, topic, first+uint64(i), at, p)
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
