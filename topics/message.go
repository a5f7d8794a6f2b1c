package topics

// Message is one MQTT message as the broker hands it to an in-process
// subscriber (the embedded broker and the external-broker client alike),
// so that either is the backend's Bus without an adapter. Username is the
// publishing client's account; empty for in-process publishes or when the
// broker does not say.
type Message struct {
	Topic    string
	Payload  []byte
	Username string
}
