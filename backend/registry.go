package backend

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/redis/go-redis/v9"
)

// Device is a device's registry entry and presence, as the API shows it.
type Device struct {
	ID string `json:"id"`
	// Labels are the operator's key=value tags (backend/selector rules);
	// never nil.
	Labels          map[string]string `json:"labels"`
	Online          bool              `json:"online"`
	LastSeen        *time.Time        `json:"last_seen"`
	FirmwareVersion string            `json:"firmware_version"`
	ConfigVersion   int64             `json:"config_version"`
	BootCount       int64             `json:"boot_count"`
	// UptimeSeconds is the uptime reported at birth plus the time since,
	// while online; the last reported uptime while offline.
	UptimeSeconds int64      `json:"uptime_s"`
	Slot          string     `json:"slot,omitempty"`
	BirthAt       *time.Time `json:"birth_at,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	// State is the lifecycle state (StateActive, StateDisabled,
	// StateDecommissioned); StateReason, StateBy and StateAt say why, who
	// and when it last changed (empty for a device never changed).
	State       string     `json:"state"`
	StateReason string     `json:"state_reason,omitempty"`
	StateBy     string     `json:"state_by,omitempty"`
	StateAt     *time.Time `json:"state_at,omitempty"`
	// FOTA is the firmware-update progress (backend/fota); nil when the
	// device never had an update.
	FOTA *DeviceFOTA `json:"fota,omitempty"`
}

// Fields of the device hash (store.Keys.Device).
const (
	fID              = "id"
	fCreatedAt       = "created_at"
	fOnline          = "online"
	fLastSeen        = "last_seen"
	fFirmwareVersion = "firmware_version"
	fConfigVersion   = "config_version"
	fBootCount       = "boot_count"
	fUptime          = "uptime_s"
	fSlot            = "slot"
	fBirthAt         = "birth_at"
	fOfflineAt       = "offline_at"
	fLabels          = "labels" // JSON object; absent when the device has none
)

// FieldConfigVersion is the device hash field with the config version the
// device last acknowledged; backend/config sets it on an ack.
const FieldConfigVersion = fConfigVersion

// provisionScript creates a device atomically, refusing an existing one
// (0) and a decommissioned one that is not purged yet (-1).
// KEYS: dev hash, psk, rxhigh, rxbits. ARGV: id, created_at ms, sealed psk,
// labels JSON ("" for none).
var provisionScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'state') == 'decommissioned' then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'created_at', ARGV[2], 'online', '0')
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'labels', ARGV[4]) end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3], KEYS[4])
return 1
`)

// Provision registers device id with a fresh random 256-bit PSK and returns
// the PSK; this is the only time it is revealed. An invalid ID is a
// CodeInvalid error, an existing device or an operator of that name
// CodeConflict; neither changes state.
func (s *Service) Provision(ctx context.Context, id string) ([]byte, error) {
	return s.ProvisionLabeled(ctx, id, nil, "")
}

// ProvisionLabeled is Provision with initial labels, recorded as a labels
// audit event by operator by. Bad labels are CodeInvalid naming the label
// (labels.KEY) and change nothing.
func (s *Service) ProvisionLabeled(ctx context.Context, id string, labels map[string]string, by string) ([]byte, error) {
	if err := topics.ValidateID(id); err != nil {
		return nil, &Error{Code: CodeInvalid, Field: "id", Message: "id must be 1-64 characters of A-Z a-z 0-9 _ -", Err: err}
	}
	if err := s.nameFree(ctx, s.keys.Operator(id), "id", "device id %q is an operator's name; devices and operators need distinct names", id); err != nil {
		return nil, err
	}
	labelsJSON, err := encodeLabels(labels)
	if err != nil {
		return nil, err
	}
	psk := make([]byte, envelope.KeySize)
	if _, err := io.ReadFull(s.random, psk); err != nil {
		return nil, fmt.Errorf("provision %s: read random: %w", id, err)
	}
	sealed, err := s.vault.Seal(id, psk)
	if err != nil {
		return nil, fmt.Errorf("provision %s: %w", id, err)
	}
	now := s.now()
	created, err := provisionScript.Run(ctx, s.rdb,
		[]string{s.keys.Device(id), s.keys.PSK(id), s.keys.RxHigh(id), s.keys.RxBits(id)},
		id, now.UnixMilli(), sealed, labelsJSON).Int()
	if err != nil {
		return nil, Unavailable("provision "+id, err)
	}
	switch created {
	case 0:
		return nil, Errorf(CodeConflict, "id", "device %s already exists", id)
	case -1:
		return nil, Errorf(CodeConflict, "id", "device %s is decommissioned; purge it (DELETE /api/v1/devices/%s?purge=true) before provisioning the ID again", id, id)
	}
	// An operator of that name may have been created since the check above
	// (another slot, so not in the script): look again now that the device
	// exists and undo it if so (see nameFree).
	if err := s.nameFree(ctx, s.keys.Operator(id), "id", "device id %q is an operator's name; devices and operators need distinct names", id); err != nil {
		if derr := s.rdb.Del(ctx, s.keys.Device(id), s.keys.PSK(id), s.keys.RxHigh(id), s.keys.RxBits(id)).Err(); derr != nil {
			return nil, Unavailable("provision "+id+": undo", derr)
		}
		return nil, err
	}
	// The index is a separate slot, so it is written after the device;
	// ZADD is idempotent.
	if err := s.rdb.ZAdd(ctx, s.keys.Devices(), redis.Z{Member: id}).Err(); err != nil {
		return nil, Unavailable("provision "+id+": index", err)
	}
	if _, err := s.addLabelIndex(ctx, id, labels); err != nil {
		return nil, err
	}
	s.cache.forget(id)
	s.log.Info().Str("device", id).Int("labels", len(labels)).Msg("device provisioned")
	if len(labels) > 0 {
		ev := map[string]any{"labels": labels, "changed": labels, "via": "provision", "by": by}
		if err := s.Emit(ctx, id, topics.EventLabels, ev); err != nil {
			s.log.Error().Err(err).Str("device", id).Msg("emit labels event")
		}
	}
	return psk, nil
}

// Device returns one device. An unknown or invalid ID is CodeNotFound.
func (s *Service) Device(ctx context.Context, id string) (Device, error) {
	if topics.ValidateID(id) != nil {
		return Device{}, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	h, err := s.rdb.HGetAll(ctx, s.keys.Device(id)).Result()
	if err != nil {
		return Device{}, Unavailable("get device "+id, err)
	}
	if len(h) == 0 {
		return Device{}, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	return s.parseDevice(id, h), nil
}

// Devices returns every device, sorted by ID.
func (s *Service) Devices(ctx context.Context) ([]Device, error) {
	ids, err := s.rdb.ZRange(ctx, s.keys.Devices(), 0, -1).Result()
	if err != nil {
		return nil, Unavailable("list devices", err)
	}
	out := make([]Device, 0, len(ids))
	const batch = 500
	for len(ids) > 0 {
		n := min(batch, len(ids))
		cmds := make([]*redis.MapStringStringCmd, n)
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids[:n] {
				cmds[i] = p.HGetAll(ctx, s.keys.Device(id))
			}
			return nil
		})
		if err != nil {
			return nil, Unavailable("list devices", err)
		}
		for i, c := range cmds {
			if h := c.Val(); len(h) > 0 {
				out = append(out, s.parseDevice(ids[i], h))
			}
		}
		ids = ids[n:]
	}
	return out, nil
}

func (s *Service) parseDevice(id string, h map[string]string) Device {
	d := Device{
		ID:              id,
		Online:          h[fOnline] == "1",
		FirmwareVersion: h[fFirmwareVersion],
		ConfigVersion:   atoi(h[fConfigVersion]),
		BootCount:       atoi(h[fBootCount]),
		UptimeSeconds:   atoi(h[fUptime]),
		Slot:            h[fSlot],
		LastSeen:        msTime(h[fLastSeen]),
		BirthAt:         msTime(h[fBirthAt]),
		FOTA:            ParseDeviceFOTA(h),
		Labels:          decodeLabels(h[fLabels]),
		State:           h[fState],
		StateReason:     h[fStateReason],
		StateBy:         h[fStateBy],
		StateAt:         msTime(h[fStateAt]),
	}
	if d.State == "" {
		d.State = StateActive
	}
	if c := msTime(h[fCreatedAt]); c != nil {
		d.CreatedAt = *c
	}
	if d.Online && d.BirthAt != nil {
		if since := s.now().Sub(*d.BirthAt); since > 0 {
			d.UptimeSeconds += int64(since / time.Second)
		}
	}
	return d
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func msTime(s string) *time.Time {
	if s == "" {
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return nil
	}
	t := time.UnixMilli(n).UTC()
	return &t
}

// DeviceKeys returns the keys derived from device id's PSK, for the broker's
// password check and the envelope. Results are cached in memory (bounded,
// with a TTL) because every connect asks. An unknown device is an error
// matching ErrNotFound.
func (a *Accounts) DeviceKeys(ctx context.Context, id string) (*envelope.Keys, error) {
	if topics.ValidateID(id) != nil {
		return nil, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	now := a.now()
	if k, ok := a.cache.get(id, now); ok {
		return &k, nil
	}
	gen := a.cache.generation() // a forget from now on wins over what is read below
	var get *redis.StringCmd
	var rot *redis.StringCmd
	_, err := a.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		get = p.Get(ctx, a.keys.PSK(id))
		rot = p.HGet(ctx, a.keys.Dev(id, "rotation"), "state")
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, Unavailable("device keys "+id, err)
	}
	sealed, err := get.Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, Errorf(CodeNotFound, "id", "no device %q", id)
	}
	if err != nil {
		return nil, Unavailable("device keys "+id, err)
	}
	psk, err := a.vault.Open(id, sealed)
	if err != nil {
		return nil, fmt.Errorf("device keys %s: %w", id, err)
	}
	k, err := envelope.DeriveKeys(psk)
	clear(psk)
	if err != nil {
		return nil, fmt.Errorf("device keys %s: %w", id, err)
	}
	a.cache.put(id, k, rot.Val() == RotationPending, now, gen)
	return &k, nil
}

// rotationPending reports whether device id had a pending key rotation
// when its keys were cached (so the uplink path sends rotate_key again
// without a Redis read per message).
func (a *Accounts) rotationPending(id string) bool {
	a.cache.mu.Lock()
	defer a.cache.mu.Unlock()
	el, ok := a.cache.items[id]
	return ok && el.Value.(*cacheEntry).pending
}

// Forget drops device id's cached keys on this replica only. Replica mode
// calls it when another replica changed the device's key or state
// (route.Router), so that no downlink here is sealed under a destroyed key
// and no connect here is checked against one.
func (a *Accounts) Forget(id string) { a.cache.drop(id) }

// ForgetAll drops every cached key on this replica (replica mode: after
// the invalidation subscription was re-established, when some may have
// been missed).
func (a *Accounts) ForgetAll() { a.cache.dropAll() }

// OnForget sets fn to be told of every device whose cached keys a change
// on this replica dropped (rotation, promotion, disable, decommission,
// purge, provision), so that other replicas drop theirs (replica mode:
// route.Router.Invalidate). Re-reads of this replica's own cache are not
// reported. Set it before serving; nil stops it.
func (a *Accounts) OnForget(fn func(id string)) {
	if fn == nil {
		a.cache.onForget.Store(nil)
		return
	}
	a.cache.onForget.Store(&fn)
}

// keyCache is a bounded LRU of derived keys with a TTL. Alone it picks up a
// key changed by another replica only at the TTL; replica mode tells every
// replica of a change at once (Accounts.OnForget, Accounts.Forget).
type keyCache struct {
	size     int
	ttl      time.Duration
	onForget atomic.Pointer[func(id string)]

	mu    sync.Mutex // guards order, items and gen
	order *list.List // of *cacheEntry, most recent first
	items map[string]*list.Element
	// gen counts drops: an entry read from Redis before a drop is not put
	// after it (it may hold the key the drop was about).
	gen uint64
}

type cacheEntry struct {
	id      string
	keys    envelope.Keys
	pending bool // a key rotation was pending when the entry was made
	expires time.Time
}

func newKeyCache(size int, ttl time.Duration) *keyCache {
	return &keyCache{size: size, ttl: ttl, order: list.New(), items: make(map[string]*list.Element)}
}

func (c *keyCache) get(id string, now time.Time) (envelope.Keys, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[id]
	if !ok {
		return envelope.Keys{}, false
	}
	e := el.Value.(*cacheEntry)
	if now.After(e.expires) {
		c.order.Remove(el)
		delete(c.items, id)
		return envelope.Keys{}, false
	}
	c.order.MoveToFront(el)
	return e.keys, true
}

func (c *keyCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// put caches k unless a drop happened since generation returned gen.
func (c *keyCache) put(id string, k envelope.Keys, pending bool, now time.Time, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	e := &cacheEntry{id: id, keys: k, pending: pending, expires: now.Add(c.ttl)}
	if el, ok := c.items[id]; ok {
		el.Value = e
		c.order.MoveToFront(el)
		return
	}
	c.items[id] = c.order.PushFront(e)
	for c.order.Len() > c.size {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*cacheEntry).id)
	}
}

// forget drops id after a change of its key or state made here, and
// tells the OnForget hook (the other replicas).
func (c *keyCache) forget(id string) {
	c.drop(id)
	if fn := c.onForget.Load(); fn != nil {
		(*fn)(id)
	}
}

// drop drops id on this replica only: for a re-read, or a change that
// another replica made.
func (c *keyCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if el, ok := c.items[id]; ok {
		c.order.Remove(el)
		delete(c.items, id)
	}
}

func (c *keyCache) dropAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.order.Init()
	clear(c.items)
}

// nameFree returns a CodeConflict error when key (the other kind of
// account of the same name) exists. Devices and operators share the broker's
// username space, so a name is one or the other. The two live in different
// Redis slots, so Provision and EnsureOperator each write their own key
// first and then call nameFree, undoing their write on a conflict: of two
// racing creations the later one always sees the earlier (at worst both
// are refused), and no name is ever left both.
func (a *Accounts) nameFree(ctx context.Context, key, field, format string, args ...any) error {
	n, err := a.rdb.Exists(ctx, key).Result()
	if err != nil {
		return Unavailable("check name", err)
	}
	if n > 0 {
		return Errorf(CodeConflict, field, format, args...)
	}
	return nil
}
