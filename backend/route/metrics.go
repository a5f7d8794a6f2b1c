package route

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	downlinks         *prometheus.CounterVec // by path: local, routed, no_holder
	received          *prometheus.CounterVec // by kind: downlink, event, close, forget, bad
	eventFanoutErrors prometheus.Counter
	closed            prometheus.Counter
	closeDropped      prometheus.Counter
	forgetErrors      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		downlinks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_route_downlinks_total",
			Help: "Downlinks by path: local (this replica holds the device, or none does), routed (to the holding replica), no_holder (its holder was not subscribed: dropped).",
		}, []string{"path"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_route_received_total",
			Help: "Frames received from other replicas, by kind (downlink, event, close, forget, bad).",
		}, []string{"kind"}),
		eventFanoutErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_route_event_fanout_errors_total",
			Help: "Events published locally but not fanned out to the other replicas (Redis failed).",
		}),
		closed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_route_sessions_closed_total",
			Help: "Device connections closed here because the device connected through another replica.",
		}),
		closeDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_route_close_requests_dropped_total",
			Help: "Takeover close requests not sent (queue full or Redis failed); the old session ends at its keepalive.",
		}),
		forgetErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_route_forget_errors_total",
			Help: "Key-cache invalidations not sent to the other replicas (Redis failed); they use the old key until their cache TTL.",
		}),
	}
	for _, c := range []prometheus.Collector{m.downlinks, m.received, m.eventFanoutErrors, m.closed, m.closeDropped, m.forgetErrors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("route: register metrics: %w", err)
		}
	}
	return m, nil
}
