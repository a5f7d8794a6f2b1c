package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/route"
	"github.com/ecowatt/ecowatt/backend/store"
)

// router is serve's replica mode (--cluster): the backend publishes
// through a route.Router in front of the embedded broker. Its methods
// accept a nil router (not in replica mode) and then change nothing.
type router struct{ *route.Router }

// checkCluster refuses --cluster without a shared Redis or with an
// external broker; runServe calls it before anything is created.
func checkCluster(c serveConfig) error {
	switch {
	case !c.scale.cluster:
		return nil
	case c.redisURL == "":
		return usageError{"--cluster needs a shared --redis (Redis >= 7): the in-process store is one replica's own"}
	case c.scale.brokerURL != "":
		return usageError{"--cluster and --broker-url exclude each other: replica mode runs the embedded broker on every replica"}
	}
	return nil
}

// newRouter returns nil without --cluster.
func newRouter(c serveConfig, m *messaging, rdb redis.UniversalClient, replica string, log zerolog.Logger, reg prometheus.Registerer) (*router, error) {
	if !c.scale.cluster {
		return nil, nil
	}
	if err := checkCluster(c); err != nil {
		return nil, err
	}
	keys, err := store.NewKeys(c.redisPrefix)
	if err != nil {
		return nil, usageError{"--redis-prefix: " + err.Error()}
	}
	r, err := route.New(route.Config{
		Local: m.brk, Sessions: m.brk, Redis: rdb, Keys: keys,
		Replica: replica, Logger: log, Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	log.Info().Msg("replica mode: downlinks and events routed through Redis sharded pub/sub")
	return &router{r}, nil
}

func (r *router) bus(local backend.Bus) backend.Bus {
	if r == nil {
		return local
	}
	return r.Router
}

// configure lets the backend report takeovers across replicas.
func (r *router) configure(cfg *backend.Config) {
	if r != nil {
		cfg.Takeover = r.Takeover
	}
}

// attach hands events from other replicas to svc's SSE subscribers, and
// joins svc's key cache to the other replicas' (a change here drops the
// device's keys there, and theirs here).
func (r *router) attach(svc *backend.Service) {
	if r != nil {
		r.HandleEvents(svc.DeliverEvent)
		r.HandleForget(svc.Forget, svc.ForgetAll)
		svc.OnForget(r.Invalidate)
	}
}

// ready adds the router's subscriptions to local's readiness.
func (r *router) ready(local func() error) func() error {
	if r == nil {
		return local
	}
	return func() error {
		if err := local(); err != nil {
			return err
		}
		return r.Ready()
	}
}
