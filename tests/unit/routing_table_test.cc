#include "router/routing_table.h"

#include <gtest/gtest.h>

namespace ferry::router {
namespace {

TEST(RoutingTableTest, PrefixMatchesAtSegmentBoundaries) {
  EXPECT_TRUE(PrefixMatches("/", "/"));
  EXPECT_TRUE(PrefixMatches("/", "/anything/at/all"));
  EXPECT_TRUE(PrefixMatches("/a", "/a"));
  EXPECT_TRUE(PrefixMatches("/a", "/a/"));
  EXPECT_TRUE(PrefixMatches("/a", "/a/b"));
  EXPECT_FALSE(PrefixMatches("/a", "/ab"));
  EXPECT_FALSE(PrefixMatches("/a/b", "/a"));
  EXPECT_FALSE(PrefixMatches("/a", ""));
}

TEST(RoutingTableTest, LongestPrefixWins) {
  RoutingTable table({{"/", "root", "R", nullptr}, {"/a", "a", "A", nullptr}, {"/a/b", "ab", "AB", nullptr}});
  EXPECT_EQ(table.Match("/a/b/c")->application, "ab");
  EXPECT_EQ(table.Match("/a/b")->application, "ab");
  EXPECT_EQ(table.Match("/a/bc")->application, "a");
  EXPECT_EQ(table.Match("/a")->application, "a");
  EXPECT_EQ(table.Match("/x")->application, "root");
}

TEST(RoutingTableTest, NoMatchWithoutRoot) {
  RoutingTable table({{"/a", "a", "A", nullptr}});
  EXPECT_EQ(table.Match("/b"), nullptr);
  EXPECT_EQ(table.Match("/"), nullptr);
}

TEST(RoutingTableTest, CellPublishesSnapshots) {
  RoutingTableCell cell;
  EXPECT_TRUE(cell.Get()->routes().empty());
  auto old = cell.Get();
  cell.Publish(std::make_shared<const RoutingTable>(std::vector<Route>{{"/a", "a", "A", nullptr}}));
  EXPECT_EQ(cell.Get()->routes().size(), 1u);
  EXPECT_TRUE(old->routes().empty());  // readers keep the snapshot they took
}

}  // namespace
}  // namespace ferry::router
