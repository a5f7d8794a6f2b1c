package store

import (
	"fmt"
	"strings"
)

// Keys names every Redis key. Every per-device key is
//
//	<prefix>{dev:<id>}:<name>
//
// so that one device's keys share a Redis Cluster slot and a Lua script or
// MULTI may touch several of them. Fleet-wide keys are <prefix><name> and
// are never touched together with device keys in one script.
//
// Layout (prefix "ecowatt:"):
//
//	ecowatt:{dev:ID}:dev     hash    registry + presence (id, created_at, online, last_seen, ...)
//	ecowatt:{dev:ID}:psk     string  the PSK sealed by the key vault (never plain)
//	ecowatt:{dev:ID}:rxhigh  string  uplink replay window: highest accepted nonce
//	ecowatt:{dev:ID}:rxbits  string  uplink replay window: 64-bit ring, bit n%64 = nonce n seen
//	ecowatt:{dev:ID}:txnonce string  last downlink nonce
//	ecowatt:{dev:ID}:audit   stream  audit events (capped)
//	ecowatt:devices          zset    every device ID, score 0 (lexicographic order)
//	ecowatt:online           zset    online device IDs, score = last birth (unix ms)
//	ecowatt:security         stream  every security rejection, fleet-wide (capped)
//	ecowatt:{idx}:l:K=V      set     IDs of the devices with label K=V (backend/fleet.go)
//	ecowatt:{idx}:lk:K       set     IDs of the devices with a label K
//	ecowatt:{idx}:keys       set     names of every label index key above (for the repair pass)
//	ecowatt:{idx}:cursorkey  string  random HMAC key that signs page cursors (shared by replicas)
//	ecowatt:{ops}:op:NAME    hash    operator account (bcrypt hash, role, created_at)
//	ecowatt:{ops}:operators  zset    every operator name, score 0
//	ecowatt:{ops}:optok:NAME hash    the operator's API tokens: token id -> SHA-256 (hex)
//	ecowatt:{ops}:tok:SHA    hash    one API token: operator, id, created_at, last_used
//	ecowatt:replica:ID       string  replica heartbeat (TTL): ID is alive and reconciles its devices' presence
//
// Operator keys share the {ops} hash tag so that deleting an operator can
// check "not the last admin" and drop its tokens in one script.
type Keys struct {
	prefix string
}

// DefaultPrefix is the prefix used in production.
const DefaultPrefix = "ecowatt:"

// NewKeys returns a key builder for prefix. The prefix may not contain '{'
// or '}', which would break the hash tags.
func NewKeys(prefix string) (Keys, error) {
	if strings.ContainsAny(prefix, "{}") {
		return Keys{}, fmt.Errorf("redis key prefix %q: must not contain { or }", prefix)
	}
	return Keys{prefix: prefix}, nil
}

// OrDefault returns k, or the key builder for DefaultPrefix when k is the
// zero Keys (a service Config whose Keys were not set).
func (k Keys) OrDefault() Keys {
	if k == (Keys{}) {
		return Keys{prefix: DefaultPrefix}
	}
	return k
}

// Prefix returns the prefix every key starts with.
func (k Keys) Prefix() string { return k.prefix }

// Tag is the hash tag shared by all keys of device id.
func Tag(id string) string { return "{dev:" + id + "}" }

// Dev names a per-device key. Later features (config, commands, FOTA) add
// their keys through it, so they stay in the device's slot.
func (k Keys) Dev(id, name string) string { return k.prefix + Tag(id) + ":" + name }

// Global names a fleet-wide key.
func (k Keys) Global(name string) string { return k.prefix + name }

// Device is the device's registry and presence hash.
func (k Keys) Device(id string) string { return k.Dev(id, "dev") }

// PSK holds the device's sealed PSK.
func (k Keys) PSK(id string) string { return k.Dev(id, "psk") }

// RxHigh and RxBits hold the uplink replay window.
func (k Keys) RxHigh(id string) string { return k.Dev(id, "rxhigh") }

// RxBits is the 64-bit ring of seen nonces; see RxHigh.
func (k Keys) RxBits(id string) string { return k.Dev(id, "rxbits") }

// TxNonce holds the last nonce the backend sent the device.
func (k Keys) TxNonce(id string) string { return k.Dev(id, "txnonce") }

// Audit is the device's audit event stream.
func (k Keys) Audit(id string) string { return k.Dev(id, "audit") }

// Devices is the index of all device IDs.
func (k Keys) Devices() string { return k.Global("devices") }

// Online is the index of online devices.
func (k Keys) Online() string { return k.Global("online") }

// Replica is the heartbeat of backend replica id (backend/reconcile.go).
func (k Keys) Replica(id string) string { return k.Global("replica:" + id) }

// Security is the fleet-wide security event stream.
func (k Keys) Security() string { return k.Global("security") }

// IndexTag is the hash tag of the fleet indexes: they share one Cluster
// slot so that set operations across them (SINTER, SUNION) are allowed.
const IndexTag = "{idx}"

// LabelIndex is the set of devices with label key=value.
func (k Keys) LabelIndex(key, value string) string {
	return k.prefix + IndexTag + ":l:" + key + "=" + value
}

// LabelKeyIndex is the set of devices with a label key, any value.
func (k Keys) LabelKeyIndex(key string) string { return k.prefix + IndexTag + ":lk:" + key }

// IndexKeys is the set of the names of every label index key.
func (k Keys) IndexKeys() string { return k.prefix + IndexTag + ":keys" }

// CursorKey holds the key that signs page cursors.
func (k Keys) CursorKey() string { return k.prefix + IndexTag + ":cursorkey" }

// OpsTag is the hash tag of every operator key.
const OpsTag = "{ops}"

// Ops names an operator key; all of them share one slot.
func (k Keys) Ops(name string) string { return k.prefix + OpsTag + ":" + name }

// Operator is an operator account hash.
func (k Keys) Operator(name string) string { return k.Ops("op:" + name) }

// Operators is the index of operator names.
func (k Keys) Operators() string { return k.Ops("operators") }

// OperatorTokens maps an operator's token IDs to their SHA-256.
func (k Keys) OperatorTokens(name string) string { return k.Ops("optok:" + name) }

// Token is one API token, named by the hex SHA-256 of its secret.
func (k Keys) Token(sha string) string { return k.Ops("tok:" + sha) }
