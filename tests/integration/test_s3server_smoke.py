def test_s3_roundtrip(s3_server):
    c = s3_server.client()
    s3_server.make_bucket("smoke")
    c.put_object(Bucket="smoke", Key="a/b.txt", Body=b"hello")
    assert c.get_object(Bucket="smoke", Key="a/b.txt")["Body"].read() == b"hello"
