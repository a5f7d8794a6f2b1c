package backend

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Service's Prometheus collectors.
type metrics struct {
	rejections     *prometheus.CounterVec
	uplink         *prometheus.CounterVec
	downlink       *prometheus.CounterVec
	handlerLatency *prometheus.HistogramVec
	handlerErrors  *prometheus.CounterVec
	eventsDropped  prometheus.Counter
	disconnects    *prometheus.CounterVec
	suppressed     prometheus.Counter // broker rejections folded into a later sample event
	uplinkDropped  *prometheus.CounterVec
	uplinkRetrying prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, online func() float64) (*metrics, error) {
	m := &metrics{
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_security_rejections_total",
			Help: "Device messages and connections rejected for security reasons, by reason.",
		}, []string{"reason"}),
		uplink: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_uplink_messages_total",
			Help: "Authenticated device messages accepted, by kind (\"will\" counts unsigned wills).",
		}, []string{"kind"}),
		downlink: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_downlink_messages_total",
			Help: "Signed messages sent to devices, by kind.",
		}, []string{"kind"}),
		handlerLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ecowatt_uplink_handler_seconds",
			Help:    "Time spent in uplink handlers, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"kind"}),
		handlerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_uplink_handler_errors_total",
			Help: "Uplink handler failures other than bad input, by kind.",
		}, []string{"kind"}),
		eventsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_events_dropped_total",
			Help: "Events not delivered to a slow in-process subscriber.",
		}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ecowatt_device_disconnects_total",
			Help: "Device connections the broker reported ended, by cause (broker.Cause*).",
		}, []string{"cause"}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ecowatt_security_events_suppressed_total",
			Help: "Broker rejections counted but not written as their own security event (rate limit per account).",
		}),
	}
	m.uplinkDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ecowatt_uplinks_dropped_total",
		Help: "Device messages given up after the broker acknowledged them, by kind and reason (store_unavailable, error, shutdown).",
	}, []string{"kind", "reason"})
	m.uplinkRetrying = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ecowatt_uplinks_retrying",
		Help: "Device messages held by the workers until the store answers again.",
	})
	onlineGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ecowatt_devices_online",
		Help: "Devices currently online (read from Redis).",
	}, online)
	for _, c := range []prometheus.Collector{m.rejections, m.uplink, m.downlink, m.handlerLatency, m.handlerErrors, m.eventsDropped, m.disconnects, m.suppressed, m.uplinkDropped, m.uplinkRetrying, onlineGauge} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range SecurityReasons() {
		m.rejections.WithLabelValues(r)
	}
	return m, nil
}

// onlineCount reads the size of the online index; -1 when Redis fails.
func (s *Service) onlineCount() float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, err := s.rdb.ZCard(ctx, s.keys.Online()).Result()
	if err != nil {
		return -1
	}
	return float64(n)
}
