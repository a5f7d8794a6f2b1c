package broker

import (
	"fmt"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the broker's Prometheus metrics.
type metrics struct {
	rejections   *prometheus.CounterVec // by reason
	redeliveries prometheus.Counter     // messages mochi would have dropped, delivered by redeliver
	backpressure prometheus.Counter     // deliveries that waited for a full queue
	dropped      prometheus.Counter     // messages lost despite it (client gone or stuck)
	slowClients  *prometheus.CounterVec // clients cut off for not reading, by kind
}

func newMetrics(reg prometheus.Registerer, info *system.Info) (*metrics, error) {
	m := &metrics{
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_broker_rejections_total",
			Help: "Connections, publishes, subscriptions and packets the broker refused, by reason.",
		}, []string{"reason"}),
		redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_broker_redeliveries_total",
			Help: "Messages a full client queue would have dropped, written directly instead.",
		}),
		backpressure: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_broker_backpressure_waits_total",
			Help: "Deliveries that waited for a subscriber's full outbound queue.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_broker_messages_dropped_total",
			Help: "Messages not delivered to a device subscriber because it disconnected or stopped reading.",
		}),
		slowClients: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_slow_clients_disconnected_total",
			Help: "Clients disconnected because they stopped reading (socket or queue made no progress for the slow timeout, or a device's outbound backlog overflowed), by kind (device, operator).",
		}, []string{"kind"}),
	}
	m.slowClients.WithLabelValues("device")
	m.slowClients.WithLabelValues("operator")
	for _, r := range Reasons() {
		m.rejections.WithLabelValues(r) // rates work from the first scrape
	}
	if reg == nil {
		return m, nil
	}
	load := func(p *int64) func() float64 { return func() float64 { return float64(atomic.LoadInt64(p)) } }
	cs := []prometheus.Collector{
		m.rejections, m.redeliveries, m.backpressure, m.dropped, m.slowClients,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ecowatt_broker_clients_connected",
			Help: "MQTT clients connected now.",
		}, load(&info.ClientsConnected)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ecowatt_broker_messages_received_total",
			Help: "PUBLISH packets received, in-process publishes included.",
		}, load(&info.MessagesReceived)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ecowatt_broker_messages_sent_total",
			Help: "PUBLISH packets written to clients.",
		}, load(&info.MessagesSent)),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register: %w", err)
		}
	}
	return m, nil
}
