// Package httpapi is EcoWatt's HTTP API: health and readiness probes,
// Prometheus metrics and the bearer-token admin API under /api/v1. The
// whole API is listed in routes.go; handlers are closures over their
// dependencies; backend errors become JSON in exactly one place (status).
package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Fleet is what the API needs from the backend; *backend.Service has it.
type Fleet interface {
	Provision(ctx context.Context, id string) ([]byte, error)
	Device(ctx context.Context, id string) (backend.Device, error)
	Devices(ctx context.Context) ([]backend.Device, error)
	Ping(ctx context.Context) error
}

var _ Fleet = (*backend.Service)(nil)

// Deps are the server's dependencies.
type Deps struct {
	Fleet Fleet
	// AdminToken is the bootstrap admin token: it acts as the admin
	// BootstrapName. Empty: only operators' tokens are accepted.
	AdminToken string
	// Operators resolves operators' API tokens and serves the operator
	// routes; nil means Fleet when it has them (as *backend.Service has).
	Operators Operators
	Gatherer  prometheus.Gatherer // for /metrics; default prometheus.DefaultGatherer
	// Ready reports whether the broker is listening; nil means ready.
	Ready  func() error
	Logger zerolog.Logger
	// Events feeds /api/v1/events and the audit timeline; nil means Fleet
	// when it is an EventLog (as *backend.Service is).
	Events EventLog
	// Commands serves the command routes; nil answers them with 503.
	Commands Commands
	// Configs serves the remote configuration routes; nil answers them
	// with 503.
	Configs Configs
	// Telemetry serves telemetry queries and the latest values in the
	// device document; nil answers them with 503.
	Telemetry Telemetry
	// FOTA serves firmware, device update and rollout routes; nil answers
	// them with 503.
	FOTA FOTA
	// Labels serves device labels (provisioning with labels and PATCH
	// .../labels); nil means Fleet when it has them (as *backend.Service
	// does).
	Labels Labels
	// Queries serves the paged device list and the fleet summary; nil
	// means Fleet when it has them (as *backend.Service does).
	Queries FleetQueries
	// Lifecycle serves disable, enable and DELETE of devices; nil means
	// Fleet when it has them (as *backend.Service does), else 503.
	Lifecycle Lifecycle
	// Jobs serves the fleet job routes; nil answers them with 503.
	Jobs Jobs
	// Rollouts serves /api/v1/rollouts, an alias over the job engine
	// (firmware jobs shown as rollouts); nil answers them with 503.
	Rollouts Rollouts
	// KeepAlive is the interval of event-stream keep-alive comments;
	// default DefaultKeepAlive.
	KeepAlive time.Duration
}

// MaxBodySize bounds request bodies.
const MaxBodySize = 64 << 10

// NewServer returns the API's handler.
func NewServer(d Deps) http.Handler {
	if d.Gatherer == nil {
		d.Gatherer = prometheus.DefaultGatherer
	}
	if d.Events == nil {
		d.Events, _ = d.Fleet.(EventLog)
	}
	if d.Labels == nil {
		d.Labels, _ = d.Fleet.(Labels)
	}
	if d.Queries == nil {
		d.Queries, _ = d.Fleet.(FleetQueries)
	}
	if d.Operators == nil {
		d.Operators, _ = d.Fleet.(Operators)
	}
	if d.KeepAlive <= 0 {
		d.KeepAlive = DefaultKeepAlive
	}
	if d.Ready == nil {
		d.Ready = func() error { return nil }
	}
	mux := http.NewServeMux()
	addRoutes(mux, d)
	return tokenFromQuery(eventStreamPath, mux)
}
