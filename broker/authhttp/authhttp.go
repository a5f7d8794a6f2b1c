// Package authhttp serves the embedded broker's connect and ACL rules as
// HTTP callbacks, so that an external MQTT broker enforces exactly the same
// rules: EMQX's HTTP authentication and authorization, and the HTTP backend
// of mosquitto-go-auth (Mosquitto's auth plugin).
//
// Routes (all POST; JSON or form bodies):
//
//	/mqtt/emqx/authn           {"username","password","clientid"[,"peerhost"]} -> 200 {"result":"allow"|"deny","is_superuser":bool}
//	/mqtt/emqx/authz           {"username","clientid","topic","action":"publish"|"subscribe","retain"} -> 200 {"result":"allow"|"deny"}
//	/mqtt/mosquitto/user       username, password, clientid        -> 200 allow, 403 deny
//	/mqtt/mosquitto/superuser  username                            -> 200 superuser, 403 not
//	/mqtt/mosquitto/acl        username, clientid, topic, acc      -> 200 allow, 403 deny
//
// acc is mosquitto's access: 1 read (delivery of a concrete topic), 2 write,
// 3 read and write, 4 subscribe. A storage failure is a deny for EMQX and a
// 503 (an error, hence a deny) for mosquitto-go-auth.
//
// The backend replicas' own account (Config.Superuser) is a superuser: it
// publishes downlinks and events and holds the shared subscriptions.
//
// Failed logins are throttled as on the embedded broker (broker.LoginThrottle):
// by the client's address when the broker sends it (EMQX's "peerhost";
// mosquitto-go-auth sends none) and by operator name. A wrong superuser
// password counts against the address only, so that nobody can lock the
// replicas' own account out.
package authhttp

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/broker"
	"github.com/ecowatt/ecowatt/topics"
)

// Roles finds an existing operator's role, for ACL checks (which carry no
// password). An unknown operator is an error wrapping
// broker.ErrUnknownOperator.
type Roles interface {
	OperatorRole(ctx context.Context, name string) (topics.Role, error)
}

// Config configures Handler. Auth.Devices and Roles are required.
type Config struct {
	Auth  broker.Authenticator
	Roles Roles

	// Superuser and SuperuserPassword are the backend replicas' broker
	// account; empty Superuser: no superuser.
	Superuser, SuperuserPassword string

	OnReject func(broker.Rejection) // may be nil; every refused login, publish and subscription
	Logger   zerolog.Logger
	Timeout  time.Duration // per request lookup; default 5 s

	// Throttle bounds failed logins; nil takes the broker's defaults
	// (broker.NewLoginThrottle). Its state is per process, like the
	// embedded broker's.
	Throttle *broker.LoginThrottle
}

// maxBody bounds a callback's body; real ones are a few hundred bytes.
const maxBody = 16 << 10

// Handler returns the callbacks' handler; mount it at "/mqtt/".
func Handler(cfg Config) (http.Handler, error) {
	if cfg.Auth.Devices == nil || cfg.Roles == nil {
		return nil, errors.New("authhttp: Auth.Devices and Roles are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Throttle == nil {
		cfg.Throttle = broker.NewLoginThrottle(broker.Throttle{}, broker.Throttle{})
	}
	a := &authz{cfg: cfg, log: cfg.Logger.With().Str("component", "authhttp").Logger()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mqtt/emqx/authn", a.emqxAuthn)
	mux.HandleFunc("POST /mqtt/emqx/authz", a.emqxAuthz)
	mux.HandleFunc("POST /mqtt/mosquitto/user", a.mosqUser)
	mux.HandleFunc("POST /mqtt/mosquitto/superuser", a.mosqSuperuser)
	mux.HandleFunc("POST /mqtt/mosquitto/acl", a.mosqACL)
	return mux, nil
}

type authz struct {
	cfg Config
	log zerolog.Logger
}

// verdict is the outcome of one check.
type verdict int

const (
	deny verdict = iota
	allow
	failed // storage error: neither allow nor deny is known
)

// Actions of an ACL check.
const (
	actPublish   = "publish"
	actSubscribe = "subscribe"
	actRead      = "read" // delivery of a concrete topic (mosquitto acc 1)
)

// login checks a CONNECT from addr ("" when the broker does not say).
// super reports the backend's own account. A throttled login is a deny,
// checked before any lookup.
func (a *authz) login(ctx context.Context, addr, user, pass, clientID string) (v verdict, super bool) {
	now := a.now()
	if a.isSuperuser(user) {
		if rej := a.cfg.Throttle.Check(now, addr, ""); rej != nil {
			rej.Username, rej.ClientID = user, clientID
			a.reject(*rej)
			return deny, false
		}
		if subtle.ConstantTimeCompare([]byte(pass), []byte(a.cfg.SuperuserPassword)) == 1 {
			return allow, true
		}
		rej := broker.Rejection{Username: user, ClientID: clientID, Reason: broker.ReasonBadPassword, Detail: "backend account"}
		a.cfg.Throttle.Outcome(now, addr, user, false, &rej) // the address only: see the package comment
		a.reject(rej)
		return deny, false
	}
	if rej := a.cfg.Throttle.Check(now, addr, user); rej != nil {
		rej.ClientID = clientID
		a.reject(*rej)
		return deny, false
	}
	acct, rej := a.cfg.Auth.Authenticate(ctx, user, pass, clientID)
	a.cfg.Throttle.Outcome(now, addr, user, rej == nil && !acct.Device, rej)
	if rej == nil {
		return allow, false
	}
	a.reject(*rej)
	if rej.Reason == broker.ReasonAuthError {
		return failed, false
	}
	return deny, false
}

func (a *authz) now() time.Time {
	if a.cfg.Auth.Now != nil {
		return a.cfg.Auth.Now()
	}
	return time.Now()
}

func (a *authz) isSuperuser(user string) bool {
	return a.cfg.Superuser != "" && user == a.cfg.Superuser
}

// check decides whether user (connected with clientID) may do action on
// topic. Only publish and subscribe denials are reported: deliveries are
// checked per message and their denial is the filter's, already reported.
func (a *authz) check(ctx context.Context, user, clientID, action, topic string, retain bool) verdict {
	if a.isSuperuser(user) {
		return allow
	}
	acct, v := a.account(ctx, user, clientID)
	if v != allow {
		return v
	}
	var ok bool
	reason := broker.ReasonACLSubscribe
	switch action {
	case actPublish:
		ok, reason = broker.CheckPublish(acct, topic) && !retain, broker.ReasonACLPublish
		if retain {
			reason = broker.ReasonACLRetain
		}
	case actSubscribe, actRead:
		ok = broker.CheckSubscribe(acct, topic)
	}
	if ok {
		return allow
	}
	if action != actRead {
		a.reject(broker.Rejection{Username: user, ClientID: clientID, Operator: !acct.Device, Reason: reason, Detail: action + " " + topic})
	}
	return deny
}

// account finds who an already connected user is, without a password.
func (a *authz) account(ctx context.Context, user, clientID string) (broker.Account, verdict) {
	if user == "" {
		return broker.Account{}, deny
	}
	_, err := a.cfg.Auth.Devices.DeviceKeys(ctx, user)
	switch {
	case err == nil:
		if clientID != "" && clientID != user {
			return broker.Account{}, deny
		}
		return broker.Account{Device: true, Name: user}, allow
	case !errors.Is(err, broker.ErrUnknownDevice):
		a.log.Warn().Err(err).Str("username", user).Msg("acl: device lookup failed")
		return broker.Account{}, failed
	}
	role, err := a.cfg.Roles.OperatorRole(ctx, user)
	switch {
	case errors.Is(err, broker.ErrUnknownOperator):
		return broker.Account{}, deny
	case err != nil:
		a.log.Warn().Err(err).Str("username", user).Msg("acl: operator lookup failed")
		return broker.Account{}, failed
	}
	return broker.Account{Name: user, Role: role}, allow
}

func (a *authz) reject(r broker.Rejection) {
	a.log.Debug().Str("username", r.Username).Str("client_id", r.ClientID).Str("reason", r.Reason).
		Str("detail", r.Detail).Msg("external broker request refused")
	if a.cfg.OnReject != nil {
		a.cfg.OnReject(r)
	}
}

// EMQX.

type emqxResult struct {
	Result      string `json:"result"`
	IsSuperuser *bool  `json:"is_superuser,omitempty"`
}

func (a *authz) emqxAuthn(w http.ResponseWriter, r *http.Request) {
	f, err := fields(w, r)
	if err != nil {
		a.log.Info().Err(err).Msg("emqx authn: bad request")
		writeEMQX(w, deny, new(bool))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.Timeout)
	defer cancel()
	v, super := a.login(ctx, f["peerhost"], f["username"], f["password"], f["clientid"])
	writeEMQX(w, v, &super)
}

func (a *authz) emqxAuthz(w http.ResponseWriter, r *http.Request) {
	f, err := fields(w, r)
	if err != nil {
		a.log.Info().Err(err).Msg("emqx authz: bad request")
		writeEMQX(w, deny, nil)
		return
	}
	action := f["action"]
	if action != actPublish && action != actSubscribe {
		writeEMQX(w, deny, nil)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.Timeout)
	defer cancel()
	writeEMQX(w, a.check(ctx, f["username"], f["clientid"], action, f["topic"], truthy(f["retain"])), nil)
}

// writeEMQX answers 200 with a result: EMQX reads any other status as
// "ignore", which could fall through to a permissive authorizer.
func writeEMQX(w http.ResponseWriter, v verdict, super *bool) {
	res := emqxResult{Result: "deny", IsSuperuser: super}
	if v == allow {
		res.Result = "allow"
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(res)
}

// mosquitto-go-auth (http backend, response mode "status").

func (a *authz) mosqUser(w http.ResponseWriter, r *http.Request) {
	f, err := fields(w, r)
	if err != nil {
		writeStatus(w, deny)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.Timeout)
	defer cancel()
	v, _ := a.login(ctx, "", f["username"], f["password"], f["clientid"])
	writeStatus(w, v)
}

func (a *authz) mosqSuperuser(w http.ResponseWriter, r *http.Request) {
	f, err := fields(w, r)
	if err != nil || !a.isSuperuser(f["username"]) {
		writeStatus(w, deny)
		return
	}
	writeStatus(w, allow)
}

// Mosquitto access values (mosquitto_plugin.h).
const (
	accRead      = "1"
	accWrite     = "2"
	accReadWrite = "3"
	accSubscribe = "4"
)

func (a *authz) mosqACL(w http.ResponseWriter, r *http.Request) {
	f, err := fields(w, r)
	if err != nil {
		writeStatus(w, deny)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.Timeout)
	defer cancel()
	user, cid, topic := f["username"], f["clientid"], f["topic"]
	var v verdict
	switch f["acc"] {
	case accRead:
		v = a.check(ctx, user, cid, actRead, topic, false)
	case accWrite:
		v = a.check(ctx, user, cid, actPublish, topic, false)
	case accReadWrite:
		if v = a.check(ctx, user, cid, actPublish, topic, false); v == allow {
			v = a.check(ctx, user, cid, actRead, topic, false)
		}
	case accSubscribe:
		v = a.check(ctx, user, cid, actSubscribe, topic, false)
	}
	writeStatus(w, v)
}

func writeStatus(w http.ResponseWriter, v verdict) {
	w.Header().Set("Cache-Control", "no-store")
	switch v {
	case allow:
		w.WriteHeader(http.StatusOK)
	case failed:
		w.WriteHeader(http.StatusServiceUnavailable)
	default:
		w.WriteHeader(http.StatusForbidden)
	}
}

// fields reads a flat JSON object or a form body as strings. JSON numbers
// and booleans keep their literal text ("acc": 2 -> "2").
func fields(w http.ResponseWriter, r *http.Request) (map[string]string, error) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/x-www-form-urlencoded" || ct == "multipart/form-data" {
		if err := r.ParseForm(); err != nil {
			return nil, fmt.Errorf("read form: %w", err)
		}
		out := make(map[string]string, len(r.PostForm))
		for k := range r.PostForm {
			out[k] = r.PostForm.Get(k)
		}
		return out, nil
	}
	var raw map[string]json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
		return nil, fmt.Errorf("read json: %w", err)
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		var s string
		if err := json.Unmarshal(v, &s); err == nil {
			out[k] = s
			continue
		}
		out[k] = strings.TrimSpace(string(v))
	}
	return out, nil
}

func truthy(s string) bool { return s == "true" || s == "1" }
