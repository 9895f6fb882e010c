package caserver

// FreezePodCache stops the pod informer but keeps its cache as it is, so a
// test can create a pod the cache will never see and exercise the live
// List fallback.
func (s *Server) FreezePodCache() { s.pods.Stop() }
